//! Flag values into typed arguments, and required-argument checks.

mod common;

use common::*;
use kiln_starlark::{check_args, parse_arg, ArgValue, Error, FunctionInfo, ParamInfo, ParamType};

fn param(name: &str, ty: ParamType) -> ParamInfo {
    ParamInfo {
        name: name.replace('-', "_"),
        flag: name.to_owned(),
        ty,
        default: None,
        required: true,
        help: None,
    }
}

fn raw(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}

fn parse(repo: &Repo, name: &str, ty: ParamType, values: &[&str]) -> Result<ArgValue, Error> {
    parse_arg(&repo.engine, &param(name, ty), &raw(values))
}

/// The message of a BadArgument for `flag`.
fn bad(result: Result<ArgValue, Error>, flag: &str) -> String {
    match err(result) {
        Error::BadArgument { flag: f, message } => {
            assert_eq!(f, flag);
            format!("--{f}: {message}")
        }
        other => panic!("expected BadArgument, got {other:?}"),
    }
}

#[test]
fn strings() {
    let repo = Repo::new(&[]);
    match ok(parse(&repo, "name", ParamType::Str, &["hello, world"])) {
        ArgValue::Str(s) => assert_eq!(s, "hello, world"),
        other => panic!("{other:?}"),
    }
    let msg = bad(parse(&repo, "name", ParamType::Str, &["a", "b"]), "name");
    assert!(msg.contains("given 2 times"), "{msg}");
    let msg = bad(parse(&repo, "name", ParamType::Str, &[]), "name");
    assert!(msg.contains("no value"), "{msg}");
}

#[test]
fn ints() {
    let repo = Repo::new(&[]);
    assert!(matches!(
        ok(parse(&repo, "count", ParamType::Int, &["42"])),
        ArgValue::Int(42)
    ));
    assert!(matches!(
        ok(parse(&repo, "count", ParamType::Int, &["-7"])),
        ArgValue::Int(-7)
    ));
    assert_eq!(
        bad(parse(&repo, "count", ParamType::Int, &["abc"]), "count"),
        "--count: expected int (a whole number), got \"abc\""
    );
    bad(parse(&repo, "count", ParamType::Int, &["1.5"]), "count");
    bad(
        parse(&repo, "count", ParamType::Int, &["99999999999999999999"]),
        "count",
    );
}

#[test]
fn bools() {
    let repo = Repo::new(&[]);
    for (text, want) in [("true", true), ("False", false), ("1", true), ("no", false)] {
        match ok(parse(&repo, "verbose", ParamType::Bool, &[text])) {
            ArgValue::Bool(b) => assert_eq!(b, want, "{text}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        bad(
            parse(&repo, "verbose", ParamType::Bool, &["maybe"]),
            "verbose"
        ),
        "--verbose: expected bool (true or false), got \"maybe\""
    );
}

#[test]
fn lists_split_on_commas_and_concatenate() {
    let repo = Repo::new(&[]);
    match ok(parse(
        &repo,
        "tags",
        ParamType::ListStr,
        &["a,b", "c", " d , e "],
    )) {
        ArgValue::ListStr(items) => assert_eq!(items, vec!["a", "b", "c", "d", "e"]),
        other => panic!("{other:?}"),
    }
    match ok(parse(&repo, "tags", ParamType::ListStr, &[])) {
        ArgValue::ListStr(items) => assert!(items.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn directories_must_exist() {
    let repo = Repo::new(&[("src/main.go", "package main")]);
    let src = repo.root().join("src");
    assert!(matches!(
        ok(parse(
            &repo,
            "source-dir",
            ParamType::Directory,
            &[src.to_str().unwrap()]
        )),
        ArgValue::Directory(_)
    ));
    let missing = repo.root().join("nope");
    let msg = bad(
        parse(
            &repo,
            "source-dir",
            ParamType::Directory,
            &[missing.to_str().unwrap()],
        ),
        "source-dir",
    );
    assert!(
        msg.contains("does not exist") && msg.contains("nope"),
        "{msg}"
    );
    let file = src.join("main.go");
    let msg = bad(
        parse(
            &repo,
            "source-dir",
            ParamType::Directory,
            &[file.to_str().unwrap()],
        ),
        "source-dir",
    );
    assert!(msg.contains("is not a directory"), "{msg}");
}

#[test]
fn files_must_exist() {
    let repo = Repo::new(&[("config.toml", "x = 1")]);
    let file = repo.root().join("config.toml");
    assert!(matches!(
        ok(parse(
            &repo,
            "config",
            ParamType::File,
            &[file.to_str().unwrap()]
        )),
        ArgValue::File(_)
    ));
    let msg = bad(
        parse(&repo, "config", ParamType::File, &["/no/such/file"]),
        "config",
    );
    assert!(
        msg.contains("does not exist") && msg.contains("/no/such/file"),
        "{msg}"
    );
    let msg = bad(
        parse(
            &repo,
            "config",
            ParamType::File,
            &[repo.root().to_str().unwrap()],
        ),
        "config",
    );
    assert!(msg.contains("not a regular file"), "{msg}");
}

#[test]
fn secrets_from_env_or_file() {
    let repo = Repo::new(&[]);
    // PATH is set in any test environment; no test has to set a variable.
    assert!(matches!(
        ok(parse(&repo, "token", ParamType::Secret, &["env:PATH"])),
        ArgValue::Secret(_)
    ));
    let msg = bad(
        parse(
            &repo,
            "token",
            ParamType::Secret,
            &["env:KILN_TEST_SURELY_UNSET_VARIABLE"],
        ),
        "token",
    );
    assert!(
        msg.contains("KILN_TEST_SURELY_UNSET_VARIABLE is not set"),
        "{msg}"
    );

    let secret_file = repo.outside("token.txt");
    write(&secret_file, "s3cr3t\n");
    assert!(matches!(
        ok(parse(
            &repo,
            "token",
            ParamType::Secret,
            &[&format!("file:{}", secret_file.display())]
        )),
        ArgValue::Secret(_)
    ));
    let msg = bad(
        parse(&repo, "token", ParamType::Secret, &["file:/no/such/secret"]),
        "token",
    );
    assert!(msg.contains("/no/such/secret does not exist"), "{msg}");

    // A bare value may be the secret itself: refused without echoing it.
    let msg = bad(
        parse(&repo, "token", ParamType::Secret, &["hunter2"]),
        "token",
    );
    assert!(msg.contains("env:NAME or file:PATH"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn cache_volumes_and_containers() {
    let repo = Repo::new(&[]);
    match ok(parse(&repo, "cache", ParamType::CacheVolume, &["go-mod"])) {
        ArgValue::CacheVolume(name) => assert_eq!(name, "go-mod"),
        other => panic!("{other:?}"),
    }
    bad(
        parse(&repo, "cache", ParamType::CacheVolume, &[""]),
        "cache",
    );
    assert!(matches!(
        ok(parse(&repo, "base", ParamType::Container, &["alpine:3.20"])),
        ArgValue::Container(_)
    ));
    bad(parse(&repo, "base", ParamType::Container, &[" "]), "base");
}

#[test]
fn unsupported_types_cannot_be_given() {
    let repo = Repo::new(&[]);
    let msg = bad(
        parse(
            &repo,
            "opts",
            ParamType::Unsupported("dict[str, int]".into()),
            &["x"],
        ),
        "opts",
    );
    assert!(msg.contains("dict[str, int]"), "{msg}");
}

fn info() -> FunctionInfo {
    let mut optional = param("count", ParamType::Int);
    optional.default = Some("3".into());
    optional.required = false;
    FunctionInfo {
        name: "deploy".into(),
        summary: "Deploys.".into(),
        doc: "Deploys.".into(),
        params: vec![
            param("source-dir", ParamType::Directory),
            param("token", ParamType::Secret),
            optional,
        ],
        returns: None,
    }
}

#[test]
fn check_args_names_the_missing_flag() {
    let repo = Repo::new(&[]);
    let dir = ArgValue::Directory(repo.engine.host_directory(repo.root()));
    let e = err(check_args(&info(), &[("source-dir".into(), dir.clone())]));
    match &e {
        Error::MissingArgument { flag, ty } => {
            assert_eq!(flag, "token");
            assert_eq!(*ty, ParamType::Secret);
        }
        other => panic!("expected MissingArgument, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "missing --token (Secret: env:NAME or file:PATH)"
    );

    let token = ok(parse(&repo, "token", ParamType::Secret, &["env:PATH"]));
    // Parameter names and flags are both accepted; optional ones may be left out.
    ok(check_args(
        &info(),
        &[
            ("source_dir".into(), dir.clone()),
            ("token".into(), token.clone()),
        ],
    ));
    let e = err(check_args(
        &info(),
        &[
            ("source-dir".into(), dir),
            ("token".into(), token),
            ("force".into(), ArgValue::Bool(true)),
        ],
    ));
    assert!(
        matches!(e, Error::BadArgument { ref flag, .. } if flag == "force"),
        "{e:?}"
    );
}

#[test]
fn names_and_hints() {
    let cases = [
        (ParamType::Directory, "Directory", "a host path"),
        (ParamType::File, "File", "a host path"),
        (ParamType::Secret, "Secret", "env:NAME or file:PATH"),
        (ParamType::Str, "str", "text"),
        (ParamType::Int, "int", "a whole number"),
        (ParamType::Bool, "bool", "true or false"),
        (
            ParamType::ListStr,
            "list[str]",
            "comma-separated or repeated",
        ),
        (ParamType::CacheVolume, "CacheVolume", "a cache volume name"),
        (ParamType::Container, "Container", "an image reference"),
    ];
    for (ty, name, hint) in cases {
        assert_eq!(ty.name(), name);
        assert_eq!(ty.hint(), hint);
        assert!(ty.is_supported());
    }
    let unsupported = ParamType::Unsupported("missing type annotation".into());
    assert_eq!(unsupported.name(), "missing type annotation");
    assert!(!unsupported.is_supported());
}
