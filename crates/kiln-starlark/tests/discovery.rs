//! Which functions are commands, and what their parameters look like.

mod common;

use common::*;
use kiln_starlark::{FunctionInfo, ParamInfo, ParamType};

const PIPELINE: &str = r#"load("lib/helpers.star", "helper")

def build(source_dir: Directory, config: File, api_token: Secret, name: str, count: int, verbose: bool, tags: list[str], go_cache: CacheVolume, base_image: Container) -> Container:
    """Builds the project.

    Compiles everything under source_dir.

    Args:
        source_dir: where the source is
        count: how many times
    """
    return base_image

def defaults(name: str = "main", count: int = 3, verbose: bool = False, tags: list[str] = ["a", "b"], maybe: str | None = None, untyped = 1, odd: dict[str, int] = {}, *, only_named: int = 7) -> list[Container]:
    """Has defaults."""
    return []

def quick():
    """Does nothing much."""

def wrapped():
    """A summary line that
    wraps onto a second line.
    """

def undocumented(x: str):
    return x

def _private(x: str):
    """Private, so not a command."""
    return x

CONSTANT = "not a function"
scratch_alias = scratch
"#;

const HELPERS: &str = r#"def helper(x: str):
    """A documented helper: loaded names are not commands."""
    return x
"#;

fn functions() -> Vec<FunctionInfo> {
    let repo = Repo::new(&[("kiln.star", PIPELINE), ("lib/helpers.star", HELPERS)]);
    repo.pipeline().functions()
}

fn param(name: &str, flag: &str, ty: ParamType, default: Option<&str>) -> ParamInfo {
    ParamInfo {
        name: name.to_owned(),
        flag: flag.to_owned(),
        ty,
        default: default.map(str::to_owned),
        required: default.is_none(),
        help: None,
    }
}

#[test]
fn documented_public_functions_sorted() {
    let names: Vec<String> = functions().into_iter().map(|f| f.name).collect();
    assert_eq!(names, vec!["build", "defaults", "quick", "wrapped"]);
}

#[test]
fn summary_and_whole_docstring() {
    let functions = functions();
    let build = &functions[0];
    assert_eq!(build.summary, "Builds the project.");
    assert_eq!(
        build.doc,
        "Builds the project.\n\nCompiles everything under source_dir.\n\nArgs:\n    source_dir: where the source is\n    count: how many times"
    );
    assert_eq!(build.returns.as_deref(), Some("Container"));
    let quick = &functions[2];
    assert_eq!(quick.summary, "Does nothing much.");
    assert_eq!(quick.doc, "Does nothing much.");
    assert_eq!(quick.returns, None);
    assert!(quick.params.is_empty());
    let wrapped = &functions[3];
    assert_eq!(wrapped.summary, "A summary line that");
    assert_eq!(
        wrapped.doc,
        "A summary line that\nwraps onto a second line."
    );
}

#[test]
fn every_param_type_with_kebab_case_flags() {
    let functions = functions();
    let mut params = functions[0].params.clone();
    assert_eq!(params[0].help.as_deref(), Some("where the source is"));
    assert_eq!(params[4].help.as_deref(), Some("how many times"));
    for p in &mut params {
        p.help = None;
    }
    assert_eq!(
        params,
        vec![
            param("source_dir", "source-dir", ParamType::Directory, None),
            param("config", "config", ParamType::File, None),
            param("api_token", "api-token", ParamType::Secret, None),
            param("name", "name", ParamType::Str, None),
            param("count", "count", ParamType::Int, None),
            param("verbose", "verbose", ParamType::Bool, None),
            param("tags", "tags", ParamType::ListStr, None),
            param("go_cache", "go-cache", ParamType::CacheVolume, None),
            param("base_image", "base-image", ParamType::Container, None),
        ]
    );
}

#[test]
fn defaults_and_unsupported_types() {
    let functions = functions();
    let defaults = &functions[1];
    assert_eq!(defaults.returns.as_deref(), Some("list[Container]"));
    assert_eq!(
        defaults.params,
        vec![
            param("name", "name", ParamType::Str, Some("\"main\"")),
            param("count", "count", ParamType::Int, Some("3")),
            param("verbose", "verbose", ParamType::Bool, Some("False")),
            param("tags", "tags", ParamType::ListStr, Some("[\"a\", \"b\"]")),
            param("maybe", "maybe", ParamType::Str, Some("None")),
            param(
                "untyped",
                "untyped",
                ParamType::Unsupported("missing type annotation".into()),
                Some("1")
            ),
            param(
                "odd",
                "odd",
                ParamType::Unsupported("dict[str, int]".into()),
                Some("{}")
            ),
            param("only_named", "only-named", ParamType::Int, Some("7")),
        ]
    );
}

#[test]
fn function_lookup() {
    let repo = Repo::new(&[("kiln.star", PIPELINE), ("lib/helpers.star", HELPERS)]);
    let pipeline = repo.pipeline();
    let build = ok(pipeline.function("build"));
    assert_eq!(build.param("source-dir"), build.param("source_dir"));
    assert!(build.param("source-dir").is_some());
    // Excluded functions are unknown as commands.
    for name in [
        "undocumented",
        "_private",
        "helper",
        "CONSTANT",
        "scratch_alias",
    ] {
        assert!(pipeline.function(name).is_err(), "{name}");
    }
    assert_eq!(
        pipeline.files(),
        [
            std::path::PathBuf::from("lib/helpers.star"),
            "kiln.star".into()
        ]
    );
}
