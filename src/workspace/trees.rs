//! Task trees and nodes in a workspace.
//!
//! One source of truth: the tree record in the store ([`Table::TaskTrees`], key: book id). The
//! file `TREES_DIR/<book-id>.json` is a copy of it for people and scripts: written with the
//! record, rewritten when missing, and compared by hash when read — a file that differs from the
//! record is reported and ignored (the database wins). A tree file whose book has no record yet
//! (e.g. copied from another machine) is validated against the book and imported.

use std::path::{Path, PathBuf};

use super::{books, Result, Workspace, WorkspaceError};
use crate::book::Book;
use crate::compose::RunRecord;
use crate::store::Table;
use crate::tree::{NodeId, TaskTree, TreeRecord};

/// How node ids look, for messages.
pub const ID_HELP: &str =
    "ids look like h1.7 (height 1, index 7) or a content-hash prefix of 4+ hex digits";

/// A tree, its book when it can be found, and the run whose outputs are attached to it.
#[derive(Debug, Clone)]
pub struct LoadedTree {
    pub tree: TaskTree,
    pub book: Option<Book>,
    /// The newest summarize run of this very tree, if any; its outputs fill the tree's slots.
    pub run: Option<RunRecord>,
}

impl LoadedTree {
    /// The node `spec` (a label like h1.7 or a content-hash prefix) names in this tree.
    pub fn node_id(&self, spec: &str) -> Result<NodeId> {
        self.tree.find(spec).ok_or_else(|| {
            WorkspaceError::NotFound(format!(
                "no node '{spec}' in the tree of {} ({ID_HELP})",
                self.tree.book_title()
            ))
        })
    }

    /// The book, or an error saying why it is not at hand.
    pub fn require_book(&self) -> Result<&Book> {
        self.book.as_ref().ok_or_else(|| {
            WorkspaceError::NotFound(format!(
                "the text of {} ({}) is not available: its file is missing or changed; open the \
                 book again (e.g. `rrm decompose BOOK`)",
                self.tree.book_title(),
                self.tree.book_id().short()
            ))
        })
    }
}

fn file_path(ws: &Workspace, tree: &TaskTree) -> PathBuf {
    ws.trees_dir().join(tree.file_name())
}

/// Stores `tree` as its book's tree (the record first, flushed) and writes its file copy.
pub fn save(ws: &Workspace, tree: &TaskTree) -> Result<PathBuf> {
    let path = file_path(ws, tree);
    let store = ws.store();
    store.put(Table::TaskTrees, tree.book_id().as_str(), &TreeRecord::new(tree, Some(path)))?;
    store.flush()?;
    Ok(tree.save(ws.trees_dir())?)
}

/// Makes the file copy of `record` agree with it: written when missing; when it differs, the
/// difference is reported and the file left alone (the record is what every command uses).
fn check_file(ws: &Workspace, record: &TreeRecord, tree: &TaskTree) {
    let path = file_path(ws, tree);
    match std::fs::read(&path) {
        Ok(bytes) => {
            if blake3::hash(&bytes) != blake3::hash(record.tree_json.as_bytes()) {
                tracing::warn!(
                    "{} differs from the tree stored in the database; the stored tree is used \
                     (`rrm decompose` rewrites the file)",
                    path.display()
                );
            }
        }
        Err(_) => {
            if let Err(err) = tree.save(ws.trees_dir()) {
                tracing::warn!("could not write the tree file copy {}: {err}", path.display());
            }
        }
    }
}

/// The tree of `book`: the stored one, else a tree file for it (validated, then imported).
pub fn for_book(ws: &Workspace, book: &Book) -> Result<Option<TaskTree>> {
    if let Some(record) = ws.store().get::<TreeRecord>(Table::TaskTrees, book.id().as_str())? {
        let tree = record.tree()?;
        tree.check_book(book, "the stored tree")?;
        check_file(ws, &record, &tree);
        return Ok(Some(tree));
    }
    let path = ws.trees_dir().join(format!("{}.json", book.id()));
    if !path.exists() {
        return Ok(None);
    }
    let tree = TaskTree::load(&path, book)?;
    ws.store().put(
        Table::TaskTrees,
        book.id().as_str(),
        &TreeRecord::new(&tree, Some(path.clone())),
    )?;
    ws.store().flush()?;
    tracing::info!("imported the tree file {} into the database", path.display());
    Ok(Some(tree))
}

/// Every tree the workspace knows: the stored ones, then tree files of books without a stored
/// tree. A record or file that cannot be read is reported and skipped.
pub fn all(ws: &Workspace) -> Result<Vec<TaskTree>> {
    let mut trees: Vec<TaskTree> = Vec::new();
    for (key, record) in ws.store().scan_lenient::<TreeRecord>(Table::TaskTrees, "")? {
        match record.tree() {
            Ok(tree) => trees.push(tree),
            Err(err) => tracing::warn!("stored tree {key}: {err}"),
        }
    }
    if let Ok(entries) = std::fs::read_dir(ws.trees_dir()) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let known = path.file_stem().is_some_and(|stem| {
                trees.iter().any(|t| t.book_id().as_str() == stem.to_string_lossy())
            });
            if known {
                continue;
            }
            match TaskTree::load_unchecked(&path) {
                Ok(tree) => trees.push(tree),
                Err(err) => tracing::warn!("{err}"),
            }
        }
    }
    Ok(trees)
}

/// Attaches the outputs of the newest run of this very tree (same root hash), if any.
pub fn attach_run(ws: &Workspace, loaded: &mut LoadedTree) -> Result<()> {
    let store = ws.store();
    if let Some(run) = RunRecord::latest_for_tree(store, &loaded.tree)? {
        run.attach(store, &mut loaded.tree)?;
        loaded.run = Some(run);
    }
    Ok(())
}

/// Wraps a tree with its book (looked up by id) and its newest run.
pub fn load_tree(ws: &Workspace, tree: TaskTree) -> Result<LoadedTree> {
    let book = books::by_id(ws, tree.book_id())?;
    let mut loaded = LoadedTree { tree, book, run: None };
    attach_run(ws, &mut loaded)?;
    Ok(loaded)
}

/// The tree named by `target`: a tree file (read directly; its book looked up), or a book (a file
/// or catalog id) whose tree is stored.
pub fn load_target(ws: &Workspace, target: &str, lossy: bool) -> Result<LoadedTree> {
    if target.ends_with(".json") {
        let tree = TaskTree::load_unchecked(target)?;
        let book = books::by_id(ws, tree.book_id())?;
        match &book {
            Some(book) => tree.check_book(book, target)?,
            None => tracing::warn!("the book of {target} is not in the database; showing no text"),
        }
        let mut loaded = LoadedTree { tree, book, run: None };
        attach_run(ws, &mut loaded)?;
        return Ok(loaded);
    }
    let book = match ws.open_book(target, lossy, &|_| {}) {
        Ok(book) => book,
        // An evaluation document's id (`rrm eval show`) names the book whose text it is.
        Err(e) => match eval_document_book(ws, target)? {
            Some(book_id) => return by_book_id(ws, &book_id),
            None => return Err(e),
        },
    };
    let tree = for_book(ws, &book)?.ok_or_else(|| {
        WorkspaceError::NotFound(format!(
            "no task tree for '{}' yet; build one with `rrm decompose {target}`",
            book.title()
        ))
    })?;
    let mut loaded = LoadedTree { tree, book: Some(book), run: None };
    attach_run(ws, &mut loaded)?;
    Ok(loaded)
}

/// The book id of the evaluation document `id` (`rrm eval show`), if one stored evaluation run
/// has it. Ids come from the references file (or are `line-N`), so two runs may give one id to
/// different texts: then `--run` must say which.
fn eval_document_book(ws: &Workspace, id: &str) -> Result<Option<String>> {
    let mut found: Vec<(String, String)> = Vec::new();
    for run in crate::eval::runs::all(ws.store())? {
        if let Some(doc) = run.documents.iter().find(|d| d.id == id) {
            if !found.iter().any(|(_, book)| *book == doc.book_id) {
                found.push((run.name.clone(), doc.book_id.clone()));
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, book)| book)),
        _ => {
            let runs: Vec<&str> = found.iter().map(|(run, _)| run.as_str()).collect();
            Err(WorkspaceError::Invalid(format!(
                "'{id}' is a document of several evaluation runs with different texts ({}); say \
                 which with `--run NAME`",
                runs.join(", ")
            )))
        }
    }
}

/// The tree of the book with id `book_id` (as recorded in the store).
pub fn by_book_id(ws: &Workspace, book_id: &str) -> Result<LoadedTree> {
    let record = ws.store().get::<TreeRecord>(Table::TaskTrees, book_id)?.ok_or_else(|| {
        WorkspaceError::NotFound(format!(
            "no task tree for book {}",
            &book_id[..book_id.len().min(12)]
        ))
    })?;
    load_tree(ws, record.tree()?)
}

/// The tree named by `target`, with the outputs of the run `run` names attached (the newest
/// when `None`; see [`attach_named_run`]). With an evaluation run, `target` may also be one of
/// its document ids.
pub fn load_target_in_run(
    ws: &Workspace,
    target: &str,
    run: Option<&str>,
    lossy: bool,
) -> Result<LoadedTree> {
    let Some(run) = run else { return load_target(ws, target, lossy) };
    let eval = eval_run(ws, run)?;
    let mut loaded = match eval.as_ref().and_then(|e| e.documents.iter().find(|d| d.id == target)) {
        Some(doc) => by_book_id(ws, &doc.book_id)?,
        None => load_target(ws, target, lossy).map_err(|e| match &eval {
            Some(_) => WorkspaceError::NotFound(format!(
                "{e}; nor is '{target}' a document of evaluation run '{run}'"
            )),
            None => WorkspaceError::NotFound(format!(
                "{e}; and '{run}' names no evaluation run (`rrm eval list`) whose document it \
                 could be"
            )),
        })?,
    };
    attach_named_run(ws, &mut loaded, run, eval.as_ref())?;
    Ok(loaded)
}

/// [`find_node`], with the outputs of the run `run` names attached (the newest when `None`; see
/// [`attach_named_run`]). With an evaluation run, `book` may also be one of its document ids.
pub fn find_node_in_run(
    ws: &Workspace,
    id: &str,
    book: Option<&str>,
    run: Option<&str>,
    lossy: bool,
) -> Result<(LoadedTree, NodeId)> {
    let Some(run) = run else { return find_node(ws, id, book, lossy) };
    let (mut loaded, nid) = match book {
        Some(book) => {
            let loaded = load_target_in_run(ws, book, Some(run), lossy)?;
            let nid = loaded.node_id(id)?;
            return Ok((loaded, nid));
        }
        None => find_node(ws, id, None, lossy)?,
    };
    let eval = eval_run(ws, run)?;
    attach_named_run(ws, &mut loaded, run, eval.as_ref())?;
    Ok((loaded, nid))
}

/// The evaluation run named `name`, if there is one.
fn eval_run(ws: &Workspace, name: &str) -> Result<Option<crate::eval::runs::EvalRun>> {
    use crate::eval::runs;
    if !runs::exists(ws.store(), name)? {
        return Ok(None);
    }
    Ok(Some(runs::load(ws.store(), name)?))
}

/// Replaces the outputs attached to `loaded` with those of the run `spec` names: the composition
/// that made an evaluation run's summary of this book (`eval` is that run, when `spec` names
/// one), or a summarize run id or a prefix of it (`tree show` prints the id). The run must have
/// composed this very tree.
pub fn attach_named_run(
    ws: &Workspace,
    loaded: &mut LoadedTree,
    spec: &str,
    eval: Option<&crate::eval::runs::EvalRun>,
) -> Result<()> {
    let store = ws.store();
    let tree = &loaded.tree;
    let title = format!("{} [{}]", tree.book_title(), tree.book_id().short());
    let runs = RunRecord::for_book(store, tree.book_id().as_str())?;
    let record = match eval {
        Some(eval) => {
            let doc =
                eval.documents.iter().find(|d| d.book_id == tree.book_id().as_str()).ok_or_else(
                    || {
                        let ids: Vec<&str> =
                            eval.documents.iter().map(|d| d.id.as_str()).take(8).collect();
                        WorkspaceError::NotFound(format!(
                            "evaluation run '{spec}' has no document whose text is the book \
                             {title}; its documents include: {}",
                            ids.join(", ")
                        ))
                    },
                )?;
            let run_id = doc.run_id.as_deref().ok_or_else(|| {
                WorkspaceError::NotFound(format!(
                    "evaluation run '{spec}' was stored before runs recorded which summarize run \
                     made each summary; store it again (`rrm eval summaries … --run {spec} \
                     --replace`, served from the cache)"
                ))
            })?;
            runs.into_iter().find(|r| r.run_id == run_id).ok_or_else(|| {
                WorkspaceError::NotFound(format!(
                    "the summarize run {run_id} that made evaluation run '{spec}''s summary of \
                     {title} is no longer stored"
                ))
            })?
        }
        None => {
            let mut hits: Vec<RunRecord> =
                runs.iter().filter(|r| r.run_id.starts_with(spec)).cloned().collect();
            if hits.len() != 1 {
                let known: Vec<String> = runs
                    .iter()
                    .rev()
                    .take(6)
                    .map(|r| format!("{} ({})", r.run_id, r.selector))
                    .collect();
                let what = if hits.is_empty() { "names no" } else { "names more than one" };
                return Err(WorkspaceError::NotFound(format!(
                    "'{spec}' {what} evaluation run or summarize run of {title} (an evaluation \
                     run's name, see `rrm eval list`, or a run id or its prefix); its newest \
                     runs: {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
            hits.remove(0)
        }
    };
    if !record.matches(tree) {
        return Err(WorkspaceError::Invalid(format!(
            "run {} composed another tree of {title} (the tree was rebuilt since); its outputs \
             do not fit this tree's nodes",
            record.run_id
        )));
    }
    let ids: Vec<NodeId> = loaded.tree.nodes_topological();
    for id in ids {
        loaded.tree.set_output(id, None);
    }
    record.attach(store, &mut loaded.tree)?;
    loaded.run = Some(record);
    Ok(())
}

/// Finds node `id` in the tree of `book` (a book or tree file), or in every known tree when no
/// book is given (an id found in several trees is an error naming them).
pub fn find_node(
    ws: &Workspace,
    id: &str,
    book: Option<&str>,
    lossy: bool,
) -> Result<(LoadedTree, NodeId)> {
    if let Some(spec) = book {
        let loaded = load_target(ws, spec, lossy)?;
        let nid = loaded.node_id(id)?;
        return Ok((loaded, nid));
    }
    let trees = all(ws)?;
    if trees.is_empty() {
        return Err(WorkspaceError::NotFound(
            "no task trees yet; build one with `rrm decompose BOOK`".into(),
        ));
    }
    let mut matches: Vec<(TaskTree, NodeId)> =
        trees.into_iter().filter_map(|tree| tree.find(id).map(|n| (tree, n))).collect();
    match matches.len() {
        0 => Err(WorkspaceError::NotFound(format!(
            "no node '{id}' in any of the known task trees ({ID_HELP})"
        ))),
        1 => {
            let (tree, nid) = matches.remove(0);
            Ok((load_tree(ws, tree)?, nid))
        }
        n => {
            let titles: Vec<String> = matches
                .iter()
                .map(|(t, _)| format!("{} [{}]", t.book_title(), t.book_id().short()))
                .collect();
            Err(WorkspaceError::Invalid(format!(
                "'{id}' names nodes in {n} trees ({}); pass --book BOOK",
                titles.join(", ")
            )))
        }
    }
}

/// Where a tree's file copy lives.
pub fn tree_file(ws: &Workspace, tree: &TaskTree) -> PathBuf {
    file_path(ws, tree)
}

/// Whether `path` looks like a tree file name.
pub fn is_tree_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}
