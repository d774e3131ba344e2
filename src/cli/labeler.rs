//! `rrm labeler add|list|remove`: the people who rate in the web app (`rrm serve`).

use anyhow::bail;
use clap::{Args, Subcommand};

use super::args::WorkspaceArgs;
use super::Context;
use crate::workspace::labelers;

/// Labelers of the web app: each signs in with a token that is printed once.
#[derive(Debug, Args)]
#[command(after_help = "The token is printed once and only its hash is stored: hand it to the \
labeler (they paste it into the sign-in page of `rrm serve`). With labelers, `rrm serve` asks \
everyone to sign in and may listen on other addresses than 127.0.0.1.

Examples:
  rrm labeler add ann
  rrm labeler add ann --replace     # a new token; the old one stops working
  rrm labeler list
  rrm labeler remove ann")]
pub struct LabelerArgs {
    #[command(subcommand)]
    pub command: LabelerCommand,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
}

#[derive(Debug, Subcommand)]
pub enum LabelerCommand {
    /// Add a labeler and print their sign-in token (once).
    Add {
        /// 1-64 letters, digits, '-', '_' or '.' (stored with every answer they give).
        name: String,
        /// Give an existing labeler a new token.
        #[arg(long)]
        replace: bool,
    },
    /// List the labelers.
    List,
    /// Remove a labeler (their feedback stays).
    Remove { name: String },
}

pub fn run(ctx: &mut Context, args: LabelerArgs) -> anyhow::Result<()> {
    let ws = ctx.workspace(&args.ws)?;
    match args.command {
        LabelerCommand::Add { name, replace } => {
            let token = labelers::add(ws, &name, replace)?;
            eprintln!(
                "labeler {name} added; their sign-in token (shown this once, keep it secret):"
            );
            println!("{token}");
        }
        LabelerCommand::List => {
            let all = labelers::all(ws)?;
            if all.is_empty() {
                println!("no labelers (rrm serve runs in local mode on 127.0.0.1); add one with `rrm labeler add NAME`");
            }
            for l in all {
                let added = time::OffsetDateTime::from_unix_timestamp(l.created_unix as i64)
                    .map(|d| d.date().to_string())
                    .unwrap_or_default();
                println!("{}  (added {added})", l.name);
            }
        }
        LabelerCommand::Remove { name } => {
            if !labelers::remove(ws, &name)? {
                bail!("no labeler '{name}' (see `rrm labeler list`)");
            }
            println!("removed labeler {name}; their feedback stays");
        }
    }
    Ok(())
}
