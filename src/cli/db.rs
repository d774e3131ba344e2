//! `rrm db check [--repair]`: read every record of the database as its owner expects it.

use clap::{Args, Subcommand};

use super::args::WorkspaceArgs;
use super::Context;
use crate::workspace::check::{self, ProblemKind};

/// Check the database and repair it.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  rrm db check
  rrm db check --repair
  rrm db check --json")]
pub struct DbArgs {
    #[command(subcommand)]
    pub command: DbCommand,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Read every record as the type its table holds, validate feedback, trees and keys, and
    /// follow references (runs → outputs → candidates). Exit code 1 when a corrupt or invalid
    /// record remains.
    Check {
        /// Move corrupt and invalid records aside into the `quarantine` table (nothing is
        /// deleted), so every command reads the database clean again.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ws: WorkspaceArgs,
    },
}

pub fn run(ctx: &mut Context, args: DbArgs) -> anyhow::Result<()> {
    let DbCommand::Check { repair, json, ws } = args.command;
    let ws = ctx.workspace(&ws)?;
    let report = check::check(ws, repair)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("database  {}", ws.store().path().display());
        for t in &report.tables {
            println!("  {:<12} {:>8} records", t.table, t.records);
        }
        for p in &report.problems {
            let what = match p.kind {
                ProblemKind::Corrupt => "corrupt",
                ProblemKind::Invalid => "invalid",
                ProblemKind::Dangling => "dangling",
                ProblemKind::Unknown => "unknown",
            };
            let moved = if p.quarantined { " → moved to quarantine" } else { "" };
            println!("{what:>9}  {}/{}: {}{moved}", p.table, p.key, p.message);
        }
        let bad = report.count(ProblemKind::Corrupt) + report.count(ProblemKind::Invalid);
        if report.problems.is_empty() {
            println!("clean: every record reads as its table's type");
        } else if report.is_clean() {
            println!(
                "clean{}: {} dangling reference(s), {} unknown key(s) reported",
                if repair && bad > 0 { " after repair" } else { "" },
                report.count(ProblemKind::Dangling),
                report.count(ProblemKind::Unknown)
            );
        }
    }
    if !report.is_clean() {
        anyhow::bail!(
            "{} corrupt or invalid record(s); `rrm db check --repair` moves them aside",
            report.count(ProblemKind::Corrupt) + report.count(ProblemKind::Invalid)
        );
    }
    Ok(())
}
