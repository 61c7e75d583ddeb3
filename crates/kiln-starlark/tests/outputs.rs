//! What a function returns, converted for the caller (nothing solved).

mod common;

use common::*;
use kiln_starlark::ArgValue;

const PIPELINE: &str = r#"
def nothing():
    """Returns None."""

def scalars():
    """Returns a tuple of scalars."""
    return (True, 42, "text", 2 * 9223372036854775807)

def values() -> list:
    """Returns engine values, lazily."""
    c = container("busybox:test").with_exec(["true"])
    return [c, c.directory("/etc").directory("ssl"), c.file("/etc/hostname"), directory(), scratch()]

def cyclic() -> list:
    """Returns a list that contains itself."""
    l = [1]
    l.append(l)
    return l

def other(token: Secret, cache: CacheVolume):
    """Returns values that are not solvable outputs."""
    return [{"a": 1}, token, cache, struct(x = 1)]

def echo(name: str, count: int, verbose: bool, tags: list[str], base: Container) -> list:
    """Returns its arguments."""
    return [name, count, verbose, tags, base]
"#;

#[test]
fn conversions() {
    let repo = Repo::new(&[("kiln.star", PIPELINE)]);
    let pipeline = repo.pipeline();
    let show =
        |name: &str, args: Vec<(String, ArgValue)>| format!("{:?}", ok(pipeline.call(name, args)));

    assert_eq!(show("nothing", vec![]), "None");
    assert_eq!(
        show("scalars", vec![]),
        "[Bool(true), Int(42), Str(\"text\"), Other(18446744073709551614)]"
    );
    assert_eq!(
        show("values", vec![]),
        "[Container(busybox:test), Directory(ssl in /etc in busybox:test), \
         File(/etc/hostname in busybox:test), Directory(empty), Container(scratch)]"
    );

    // Converted to a bounded depth, not forever.
    assert!(show("cyclic", vec![]).contains("Other([1, [...]])"));

    let secret_file = repo.outside("token");
    write(&secret_file, "value-never-shown");
    let token = repo.engine.secret_from_file(&secret_file).expect("secret");
    let out = show(
        "other",
        vec![
            ("token".into(), ArgValue::Secret(token)),
            ("cache".into(), ArgValue::CacheVolume("go".into())),
        ],
    );
    assert!(
        out.starts_with("[Other({\"a\": 1}), Other(Secret("),
        "{out}"
    );
    assert!(out.contains("Other(CacheVolume(\"go\"))"), "{out}");
    assert!(out.contains("Other(struct(x=1))"), "{out}");
    assert!(!out.contains("value-never-shown"), "{out}");

    let out = show(
        "echo",
        vec![
            ("name".into(), ArgValue::Str("n".into())),
            ("count".into(), ArgValue::Int(-3)),
            ("verbose".into(), ArgValue::Bool(false)),
            (
                "tags".into(),
                ArgValue::ListStr(vec!["a".into(), "b".into()]),
            ),
            (
                "base".into(),
                ArgValue::Container(repo.engine.container("alpine:3")),
            ),
        ],
    );
    assert_eq!(
        out,
        "[Str(\"n\"), Int(-3), Bool(false), [Str(\"a\"), Str(\"b\")], Container(alpine:3)]"
    );
}

#[test]
fn solving_scalars_changes_nothing() {
    let repo = Repo::new(&[("kiln.star", PIPELINE)]);
    let out = ok(repo.pipeline().call("scalars", vec![]));
    let solved = repo.solve(out).expect("nothing to run");
    assert_eq!(
        format!("{solved:?}"),
        "[Bool(true), Int(42), Str(\"text\"), Other(18446744073709551614)]"
    );
}
