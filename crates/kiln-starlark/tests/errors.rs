//! Syntax, type and evaluation errors point at `file:line:col` with the
//! offending source line; engine failures come back intact.

mod common;

use common::*;
use kiln_starlark::{ArgValue, Error, Output, Pipeline};

#[test]
fn syntax_error_has_position_and_source_line() {
    let repo = Repo::new(&[(
        "kiln.star",
        "# The pipeline.\nVERSION = \"1.0\"\nBAD = [1, 2 3]\n",
    )]);
    let e = err(repo.load());
    let Error::Syntax { message } = &e else {
        panic!("expected a syntax error, got {e:?}");
    };
    assert!(message.contains("kiln.star:3:13"), "{message}");
    assert!(message.contains("BAD = [1, 2 3]"), "{message}");
    assert!(message.contains('^'), "{message}");
}

#[test]
fn syntax_error_in_loaded_file_names_that_file() {
    let repo = Repo::new(&[
        ("kiln.star", "load(\"lib/go.star\", \"go\")\n"),
        ("lib/go.star", "def go(:\n    pass\n"),
    ]);
    let e = err(repo.load());
    let Error::Syntax { message } = &e else {
        panic!("expected a syntax error, got {e:?}");
    };
    assert!(message.contains("lib/go.star:1:8"), "{message}");
    assert!(message.contains("def go(:"), "{message}");
}

#[test]
fn wrong_type_to_builtin_at_top_level() {
    let repo = Repo::new(&[("kiln.star", "X = 1\n\nBASE = container(42)\n")]);
    let e = err(repo.load());
    let Error::Type { message } = &e else {
        panic!("expected a type error, got {e:?}");
    };
    assert!(message.contains("kiln.star:3:8"), "{message}");
    assert!(message.contains("BASE = container(42)"), "{message}");
    assert!(message.contains("expected `str`"), "{message}");
}

#[test]
fn wrong_type_to_builtin_inside_a_called_function() {
    let repo = Repo::new(&[(
        "kiln.star",
        "def build() -> Container:\n    \"\"\"Builds.\"\"\"\n    ref = 42\n    return container(ref)\n",
    )]);
    let pipeline = repo.pipeline();
    let e = err(pipeline.call("build", vec![]));
    let Error::Type { message } = &e else {
        panic!("expected a type error, got {e:?}");
    };
    assert!(message.contains("kiln.star:4:12"), "{message}");
    assert!(message.contains("return container(ref)"), "{message}");
    // The call stack names the function.
    assert!(message.contains("in build"), "{message}");
}

const GREET: &str = r#"def greet(name: str) -> str:
    """Greets someone."""
    return "hello " + name

def twice() -> str:
    """Greets a number, wrongly."""
    n = len("ab")
    return greet(n)
"#;

#[test]
fn int_to_str_parameter_from_the_command_line() {
    let repo = Repo::new(&[("kiln.star", GREET)]);
    let pipeline = repo.pipeline();
    let e = err(pipeline.call("greet", vec![("name".into(), ArgValue::Int(42))]));
    let Error::Type { message } = &e else {
        panic!("expected a type error, got {e:?}");
    };
    // Points at the parameter in the signature: nothing else ran.
    assert!(message.contains("kiln.star:1:11"), "{message}");
    assert!(message.contains("def greet(name: str)"), "{message}");
    assert!(message.contains("argument `name`"), "{message}");
}

#[test]
fn int_to_str_parameter_inside_starlark() {
    let repo = Repo::new(&[("kiln.star", GREET)]);
    let pipeline = repo.pipeline();
    let e = err(pipeline.call("twice", vec![]));
    let Error::Type { message } = &e else {
        panic!("expected a type error, got {e:?}");
    };
    assert!(message.contains("kiln.star:8:12"), "{message}");
    assert!(message.contains("return greet(n)"), "{message}");
    assert!(
        message.contains("does not match the type annotation `str`"),
        "{message}"
    );
}

#[test]
fn wrong_return_type() {
    let repo = Repo::new(&[(
        "kiln.star",
        "def build() -> Container:\n    \"\"\"Builds.\"\"\"\n    return \"not a container\"\n",
    )]);
    let e = err(repo.pipeline().call("build", vec![]));
    let Error::Type { message } = &e else {
        panic!("expected a type error, got {e:?}");
    };
    assert!(
        message.contains("annotation `Container` for return type"),
        "{message}"
    );
    assert!(message.contains("kiln.star:3:5"), "{message}");
    assert!(message.contains("return \"not a container\""), "{message}");
}

#[test]
fn fail_has_call_stack_with_positions() {
    let repo = Repo::new(&[
        ("kiln.star", "load(\"lib/checks.star\", \"check\")\n\ndef ci():\n    \"\"\"Runs checks.\"\"\"\n    return check(\"x\")\n"),
        ("lib/checks.star", "def check(what):\n    fail(\"check failed: \" + what)\n"),
    ]);
    let e = err(repo.pipeline().call("ci", vec![]));
    let Error::Eval { message } = &e else {
        panic!("expected an evaluation error, got {e:?}");
    };
    assert!(message.contains("check failed: x"), "{message}");
    assert!(message.contains("kiln.star:5, in ci"), "{message}");
    assert!(message.contains("lib/checks.star:2:5"), "{message}");
    assert!(!message.contains("<builtin>"), "{message}");
}

#[test]
fn unknown_function_suggests_closest() {
    let repo = Repo::new(&[(
        "kiln.star",
        "def build():\n    \"\"\"B.\"\"\"\n\ndef test():\n    \"\"\"T.\"\"\"\n\ndef lint():\n    \"\"\"L.\"\"\"\n",
    )]);
    let pipeline = repo.pipeline();
    match err(pipeline.function("biuld")) {
        Error::UnknownFunction { name, suggestions } => {
            assert_eq!(name, "biuld");
            assert_eq!(suggestions, vec!["build"]);
        }
        other => panic!("expected UnknownFunction, got {other:?}"),
    }
    let e = err(pipeline.call("tset", vec![]));
    assert!(e.to_string().contains("did you mean test?"), "{e}");
    match err(pipeline.function("deploy")) {
        Error::UnknownFunction { suggestions, .. } => assert!(suggestions.is_empty()),
        other => panic!("expected UnknownFunction, got {other:?}"),
    }
}

#[test]
fn unknown_argument_is_refused() {
    let repo = Repo::new(&[("kiln.star", GREET)]);
    let e = err(repo
        .pipeline()
        .call("greet", vec![("nmae".into(), ArgValue::Str("x".into()))]));
    let Error::BadArgument { flag, message } = &e else {
        panic!("expected BadArgument, got {e:?}");
    };
    assert_eq!(flag, "nmae");
    assert!(message.contains("--name"), "{message}");
}

#[test]
fn missing_kiln_star() {
    let repo = Repo::new(&[("README", "no pipeline here")]);
    match err(repo.load()) {
        Error::NotFound { path } => assert_eq!(path, repo.root().join("kiln.star")),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn missing_image_is_an_engine_error_naming_it() {
    let repo = Repo::new(&[(
        "kiln.star",
        "def hello() -> str:\n    \"\"\"Says hi.\"\"\"\n    return container(\"nope:1\").with_exec([\"echo\", \"hi\"]).stdout()\n",
    )]);
    match err(repo.pipeline().call("hello", vec![])) {
        Error::Engine(kiln_engine::Error::ImageNotFound { reference, .. }) => {
            assert!(reference.contains("nope"), "{reference}")
        }
        other => panic!("expected ImageNotFound, got {other:?}: {other}"),
    }
}

#[test]
fn top_level_values_are_lazy() {
    // Building values at the top level solves nothing: listing functions
    // works although the image does not exist.
    let repo = Repo::new(&[(
        "kiln.star",
        "BASE = container(\"does-not-exist:1\").with_exec([\"false\"])\n\ndef build() -> Container:\n    \"\"\"Builds.\"\"\"\n    return BASE.with_exec([\"true\"])\n",
    )]);
    let pipeline = repo.pipeline();
    assert_eq!(pipeline.functions().len(), 1);
    let out = ok(pipeline.call("build", vec![]));
    assert!(matches!(out, Output::Container(_)), "{out:?}");
    // Solving it is what fails.
    assert!(matches!(
        repo.solve(out),
        Err(kiln_engine::Error::ImageNotFound { .. })
    ));
}

const MISSING_IMAGE: &str = "def hello() -> str:\n    \"\"\"Says hi.\"\"\"\n    return container(\"nope:1\").with_exec([\"echo\", \"hi\"]).stdout()\n";

fn is_missing_image(result: Result<kiln_starlark::Output, Error>) -> bool {
    matches!(
        result,
        Err(Error::Engine(kiln_engine::Error::ImageNotFound { .. }))
    )
}

#[test]
fn solving_works_from_blocking_tasks_and_runtime_threads() {
    let repo = Repo::new(&[("kiln.star", MISSING_IMAGE)]);
    let pipeline = repo.pipeline();
    // Reaching the engine's error shows the solve happened (no panic, no
    // threading error).
    let blocking = repo.runtime.spawn_blocking(move || {
        let result = pipeline.call("hello", vec![]);
        (pipeline, result)
    });
    let (pipeline, result) = repo.runtime.block_on(blocking).expect("join");
    assert!(is_missing_image(result));
    let result = repo
        .runtime
        .block_on(async { pipeline.call("hello", vec![]) });
    assert!(is_missing_image(result));
}

#[test]
fn solving_inside_a_current_thread_runtime_is_an_error_not_a_panic() {
    let repo = Repo::new(&[("kiln.star", MISSING_IMAGE)]);
    let pipeline = repo.pipeline();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let e = err(current.block_on(async { pipeline.call("hello", vec![]) }));
    assert!(e.to_string().contains("plain thread"), "{e}");
}

#[test]
fn include_exclude_only_for_host_directories() {
    let repo = Repo::new(&[(
        "kiln.star",
        "def build() -> Container:\n    \"\"\"Builds.\"\"\"\n    d = directory().with_new_file(\"a.txt\", \"a\")\n    return container(\"busybox:test\").with_directory(\"/src\", d, include = [\"*.txt\"])\n",
    )]);
    let e = err(repo.pipeline().call("build", vec![]));
    let Error::Eval { message } = &e else {
        panic!("expected an evaluation error, got {e:?}");
    };
    assert!(message.contains("only to host directories"), "{message}");
    assert!(message.contains("kiln.star:4:12"), "{message}");
}

#[test]
fn bad_option_values_are_explained() {
    let repo = Repo::new(&[(
        "kiln.star",
        "def a() -> Container:\n    \"\"\"A.\"\"\"\n    return container(\"x\").with_exec([\"true\"], expect = \"maybe\")\n\ndef b() -> Container:\n    \"\"\"B.\"\"\"\n    return container(\"x\").with_mounted_cache(\"/c\", cache_volume(\"c\"), sharing = \"private\")\n",
    )]);
    let pipeline = repo.pipeline();
    let e = err(pipeline.call("a", vec![]));
    assert!(
        e.to_string()
            .contains("\"success\", \"any\" or \"failure\""),
        "{e}"
    );
    let e = err(pipeline.call("b", vec![]));
    assert!(e.to_string().contains("\"shared\" or \"locked\""), "{e}");
}

#[test]
fn pipeline_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Pipeline>();
}

#[test]
fn syntax_error_at_the_end_of_the_file_points_at_its_last_line() {
    let repo = Repo::new(&[(
        "kiln.star",
        "# The pipeline.\n\ndef ci():\n    \"\"\"Doc.\"\"\"\n    x = 1\n\n    return (1 +\n",
    )]);
    let e = err(repo.load());
    let Error::Syntax { message } = &e else {
        panic!("expected a syntax error, got {e:?}");
    };
    assert!(message.contains("kiln.star:7:"), "{message}");
    assert!(message.contains("return (1 +"), "{message}");
}
