//! What a called function returned, and solving it.

use futures::future::{try_join_all, BoxFuture, FutureExt};
use starlark::values::list::ListRef;
use starlark::values::tuple::TupleRef;
use starlark::values::{UnpackValue, Value};

use crate::values::{StarContainer, StarDirectory, StarFile};

/// A function's return value, outside Starlark. Engine values are lazy until
/// [`solve`]d.
#[derive(Clone)]
pub enum Output {
    None,
    Str(String),
    Int(i64),
    Bool(bool),
    Container(kiln_engine::Container),
    Directory(kiln_engine::Directory),
    File(kiln_engine::File),
    /// A list or tuple.
    List(Vec<Output>),
    /// Any other value, as Starlark prints it (a dict, a struct, a secret's
    /// label, an int too large for i64, ...). Engine values inside it are
    /// not solved.
    Other(String),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::None => write!(f, "None"),
            Output::Str(s) => write!(f, "Str({s:?})"),
            Output::Int(i) => write!(f, "Int({i})"),
            Output::Bool(b) => write!(f, "Bool({b})"),
            Output::Container(c) => write!(f, "{}", StarContainer(c.clone())),
            Output::Directory(d) => write!(f, "{}", StarDirectory(d.clone())),
            Output::File(file) => write!(f, "{}", StarFile(file.clone())),
            Output::List(items) => f.debug_list().entries(items).finish(),
            Output::Other(repr) => write!(f, "Other({repr})"),
        }
    }
}

impl Output {
    pub(crate) fn from_value(value: Value) -> Output {
        Output::from_value_within(value, 0)
    }

    fn from_value_within(value: Value, depth: usize) -> Output {
        // A list can contain itself; starlark's repr handles that.
        const MAX_DEPTH: usize = 64;
        if depth > MAX_DEPTH {
            return Output::Other(value.to_repr());
        }
        let inner = |v| Output::from_value_within(v, depth + 1);
        if value.is_none() {
            return Output::None;
        }
        if let Some(b) = value.unpack_bool() {
            return Output::Bool(b);
        }
        if let Some(s) = value.unpack_str() {
            return Output::Str(s.to_owned());
        }
        if value.get_type() == "int" {
            return match i64::unpack_value(value) {
                Ok(Some(i)) => Output::Int(i),
                _ => Output::Other(value.to_repr()),
            };
        }
        if let Some(c) = StarContainer::from_value(value) {
            return Output::Container(c.0.clone());
        }
        if let Some(d) = StarDirectory::from_value(value) {
            return Output::Directory(d.0.clone());
        }
        if let Some(file) = StarFile::from_value(value) {
            return Output::File(file.0.clone());
        }
        if let Some(list) = ListRef::from_value(value) {
            return Output::List(list.iter().map(inner).collect());
        }
        if let Some(tuple) = TupleRef::from_value(value) {
            return Output::List(tuple.iter().map(inner).collect());
        }
        Output::Other(value.to_repr())
    }
}

/// Solves everything an output holds; list elements are solved concurrently
/// (so independent containers run in parallel, and shared parts once, through
/// the engine's memo). Containers are synced, directories synced, files read.
/// The first failure is returned and the rest are cancelled.
pub async fn solve(output: Output) -> Result<Output, kiln_engine::Error> {
    solve_boxed(output).await
}

fn solve_boxed(output: Output) -> BoxFuture<'static, Result<Output, kiln_engine::Error>> {
    async move {
        Ok(match output {
            Output::Container(c) => Output::Container(c.sync().await?),
            Output::Directory(d) => Output::Directory(d.sync().await?),
            Output::File(f) => {
                // A file has no sync of its own: reading it is what solves it.
                f.contents().await?;
                Output::File(f)
            }
            Output::List(items) => {
                Output::List(try_join_all(items.into_iter().map(solve_boxed)).await?)
            }
            other => other,
        })
    }
    .boxed()
}
