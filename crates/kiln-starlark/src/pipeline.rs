//! Loading kiln.star (and the files it loads), discovering its functions,
//! and calling them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use kiln_engine::Engine;
use starlark::codemap::FileSpan;
use starlark::docs::{DocFunction, DocItem, DocMember, DocString, DocStringKind};
use starlark::environment::{FrozenModule, Globals, GlobalsBuilder, LibraryExtension, Module};
use starlark::eval::{Evaluator, FileLoader};
use starlark::syntax::{AstModule, Dialect, DialectTypes};
use starlark::typing::Ty;
use starlark::values::list::AllocList;
use starlark::values::{Heap, Value};

use crate::error::{from_starlark, Error, Phase};
use crate::limits::EvalLimits;
use crate::output::Output;
use crate::params::{
    check_args, flag_name, unknown_param, ArgValue, FunctionInfo, ParamInfo, ParamType,
};
use crate::values::{
    kiln_globals, Context, StarCacheVolume, StarContainer, StarDirectory, StarFile, StarSecret,
};

/// The file a repository's pipeline lives in.
pub const KILN_STAR: &str = "kiln.star";

/// The nearest directory at or above `start` holding kiln.star.
pub fn find_root(start: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(start).ok()?;
    start
        .ancestors()
        .find(|dir| dir.join(KILN_STAR).is_file())
        .map(Path::to_owned)
}

/// The Starlark dialect kiln files are written in: Python-like type
/// annotations checked at runtime, f-strings, keyword-only and
/// positional-only parameters, top-level `if`/`for`.
fn dialect() -> Dialect {
    Dialect {
        enable_def: true,
        enable_lambda: true,
        enable_load: true,
        enable_keyword_only_arguments: true,
        enable_positional_only_arguments: true,
        enable_types: DialectTypes::Enable,
        // A loaded name is the loading file's private business: it is not
        // re-exported, so a helper loaded into kiln.star is not a command.
        enable_load_reexport: false,
        enable_top_level_stmt: true,
        enable_f_strings: true,
        ..Dialect::Extended
    }
}

/// The globals every kiln file sees, built once per process (`--locked`
/// loads a pipeline twice: once to plan, once to run).
fn globals() -> Globals {
    static GLOBALS: OnceLock<Globals> = OnceLock::new();
    GLOBALS.get_or_init(build_globals).clone()
}

fn build_globals() -> Globals {
    use LibraryExtension::*;
    GlobalsBuilder::extended_by(&[
        StructType,
        RecordType,
        EnumType,
        NamespaceType,
        Map,
        Filter,
        Partial,
        Debug,
        Print,
        Pprint,
        Pstr,
        Prepr,
        Json,
        Typing,
        SetType,
        CallStack,
    ])
    .with(kiln_globals)
    .build()
}

/// A loaded kiln.star: its top-level code has run, its functions are known.
pub struct Pipeline {
    root: PathBuf,
    ctx: Context,
    module: FrozenModule,
    functions: Vec<FunctionInfo>,
    /// kiln.star's own `def`s, to locate errors about a call's arguments.
    defs: HashMap<String, DefSite>,
    files: Vec<PathBuf>,
}

impl Pipeline {
    /// Parses and evaluates `ROOT/kiln.star` and everything it loads.
    ///
    /// Runs on the calling thread, normally a plain thread: top-level code
    /// may call solving methods, which block it on `runtime` (see the crate
    /// docs on threading).
    pub fn load(
        root: &Path,
        engine: Engine,
        runtime: tokio::runtime::Handle,
    ) -> Result<Pipeline, Error> {
        Pipeline::load_with_limits(root, engine, runtime, EvalLimits::default())
    }

    /// [`Pipeline::load`] with explicit evaluation limits, which also bound
    /// every later [`Pipeline::call`]. Evaluation stops, too, when the
    /// engine is cancelled.
    pub fn load_with_limits(
        root: &Path,
        engine: Engine,
        runtime: tokio::runtime::Handle,
        limits: EvalLimits,
    ) -> Result<Pipeline, Error> {
        crate::limits::contain_panics("evaluating kiln.star", || {
            Pipeline::load_contained(root, engine, runtime, limits)
        })
    }

    fn load_contained(
        root: &Path,
        engine: Engine,
        runtime: tokio::runtime::Handle,
        limits: EvalLimits,
    ) -> Result<Pipeline, Error> {
        let main = root.join(KILN_STAR);
        if !main.is_file() {
            return Err(Error::NotFound { path: main });
        }
        let canonical = root.canonicalize().map_err(|e| Error::Load {
            message: format!("cannot resolve {}: {e}", root.display()),
        })?;
        let ctx = Context {
            engine,
            runtime,
            limits,
        };
        let globals = globals();
        let loader = Loader {
            root: canonical.clone(),
            ctx: &ctx,
            globals: &globals,
            dialect: dialect(),
            modules: RefCell::new(HashMap::new()),
            stack: RefCell::new(Vec::new()),
            evaluated: RefCell::new(Vec::new()),
        };
        let loaded = loader.load(Path::new(KILN_STAR))?;
        let functions = discover(&loaded.module, &loaded.defs, &globals);
        let files = loader.evaluated.take();
        drop(loader);
        Ok(Pipeline {
            root: canonical,
            ctx,
            module: loaded.module,
            functions,
            defs: loaded.defs,
            files,
        })
    }

    /// The repository root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The files the pipeline is made of, relative to the root: everything
    /// loaded (each once, dependencies first), then kiln.star.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The engine values are built on.
    pub fn engine(&self) -> &Engine {
        &self.ctx.engine
    }

    /// Top-level functions with a docstring, sorted by name; names starting
    /// with `_` are private and not listed.
    pub fn functions(&self) -> Vec<FunctionInfo> {
        self.functions.clone()
    }

    pub fn function(&self, name: &str) -> Result<FunctionInfo, Error> {
        self.functions
            .iter()
            .find(|f| f.name == name)
            .cloned()
            .ok_or_else(|| Error::UnknownFunction {
                name: name.to_owned(),
                suggestions: crate::suggest::closest(
                    name,
                    self.functions.iter().map(|f| f.name.as_str()),
                    3,
                ),
            })
    }

    /// Calls a function. Argument names may be parameter names or flags.
    /// Returns what the function returned, unsolved — except for what the
    /// function solved itself (`stdout()` and the like), which blocks this
    /// thread on the runtime.
    pub fn call(&self, name: &str, args: Vec<(String, ArgValue)>) -> Result<Output, Error> {
        crate::limits::contain_panics(&format!("{name}()"), || self.call_contained(name, args))
    }

    fn call_contained(&self, name: &str, args: Vec<(String, ArgValue)>) -> Result<Output, Error> {
        let info = self.function(name)?;
        let mut named: Vec<(String, ArgValue)> = Vec::with_capacity(args.len());
        for (given, value) in args {
            let param = info
                .param(&given)
                .ok_or_else(|| unknown_param(&info, &given))?;
            if named.iter().any(|(n, _)| *n == param.name) {
                return Err(Error::BadArgument {
                    flag: param.flag.clone(),
                    message: "given more than once".to_owned(),
                });
            }
            named.push((param.name.clone(), value));
        }
        check_args(&info, &named)?;
        Module::with_temp_heap(|module| {
            let heap = module.heap();
            let function = self.module.get(name).map_err(|e| Error::Eval {
                message: format!("internal error: {name}: {e}"),
            })?;
            // Ties the pipeline's frozen heap to this call's heap, which keeps
            // the function alive while it runs.
            let f = heap.access_owned_frozen_value(&function);
            let positional_only = positional_only_params(&f);
            // Positional-only parameters cannot be passed by name; they are
            // passed in order, which works while none before them is left out.
            let mut positional = Vec::new();
            for pname in &positional_only {
                match named.iter().position(|(n, _)| n == pname) {
                    Some(i) => positional.push(arg_value(heap, &named.remove(i).1)),
                    None => break,
                }
            }
            if let Some((n, _)) = named.iter().find(|(n, _)| positional_only.contains(n)) {
                return Err(Error::BadArgument {
                    flag: flag_name(n),
                    message: "a positional-only parameter before it must be given too".to_owned(),
                });
            }
            let named_values: Vec<(&str, Value)> = named
                .iter()
                .map(|(n, v)| (n.as_str(), arg_value(heap, v)))
                .collect();
            let mut eval = Evaluator::new(&module);
            eval.extra = Some(&self.ctx);
            let engine = &self.ctx.engine;
            self.ctx.limits.apply(&mut eval, || engine.is_cancelled());
            let result = match eval.eval_function(f, &positional, &named_values) {
                Ok(result) => result,
                Err(e) => {
                    let what = format!("{name}()");
                    if let Some(stopped) =
                        self.ctx
                            .limits
                            .exceeded(&mut eval, engine.is_cancelled(), &what)
                    {
                        return Err(stopped);
                    }
                    return Err(from_starlark(
                        locate_call_error(e, self.defs.get(name)),
                        Phase::Eval,
                    ));
                }
            };
            Ok(Output::from_value(result))
        })
    }
}

fn arg_value<'v>(heap: Heap<'v>, arg: &ArgValue) -> Value<'v> {
    match arg {
        ArgValue::Str(s) => heap.alloc(s.as_str()),
        ArgValue::Int(i) => heap.alloc(*i),
        ArgValue::Bool(b) => Value::new_bool(*b),
        ArgValue::ListStr(items) => heap.alloc(AllocList(items.iter().map(String::as_str))),
        ArgValue::Directory(d) => heap.alloc(StarDirectory(d.clone())),
        ArgValue::File(f) => heap.alloc(StarFile(f.clone())),
        ArgValue::Secret(s) => heap.alloc(StarSecret(s.clone())),
        ArgValue::CacheVolume(name) => heap.alloc(StarCacheVolume(name.clone())),
        ArgValue::Container(c) => heap.alloc(StarContainer(c.clone())),
    }
}

fn function_docs(value: &Value) -> Option<DocFunction> {
    match value.documentation() {
        DocItem::Member(DocMember::Function(f)) => Some(f),
        _ => None,
    }
}

fn positional_only_params(value: &Value) -> Vec<String> {
    function_docs(value)
        .map(|f| f.params.pos_only.into_iter().map(|p| p.name).collect())
        .unwrap_or_default()
}

/// The documented, public functions of a module.
fn discover(
    module: &FrozenModule,
    defs: &HashMap<String, DefSite>,
    globals: &Globals,
) -> Vec<FunctionInfo> {
    let mut functions = Vec::new();
    for name in module.names() {
        let name = name.as_str();
        if name.starts_with('_') {
            continue;
        }
        let Ok(Some(owned)) = module.get_option(name) else {
            continue;
        };
        let value = owned.value();
        if value.get_type() != "function" {
            continue;
        }
        // A builtin bound to a new name (`build = container`) is documented
        // too, but it is not the pipeline's function.
        if globals.iter().any(|(_, g)| g.to_value().ptr_eq(value)) {
            continue;
        }
        let Some(mut doc) = function_docs(&value) else {
            continue;
        };
        let raw = defs.get(name).and_then(|d| d.docstring.as_deref());
        if let (None, Some(raw)) = (&doc.docs, raw) {
            // Starlark finds no docstring in a body that is only a docstring.
            doc = DocFunction::from_docstring(
                DocStringKind::Starlark,
                doc.params,
                doc.ret.typ,
                Some(raw),
            );
        }
        let Some(docs) = &doc.docs else {
            continue;
        };
        functions.push(function_info(name, &doc, docs, raw));
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    functions
}

fn function_info(
    name: &str,
    doc: &DocFunction,
    docs: &DocString,
    raw_docstring: Option<&str>,
) -> FunctionInfo {
    let params = doc
        .params
        .pos_only
        .iter()
        .chain(&doc.params.pos_or_named)
        .chain(&doc.params.named_only)
        .map(|p| ParamInfo {
            name: p.name.clone(),
            flag: flag_name(&p.name),
            ty: ParamType::from_annotation(&p.typ.to_string()),
            default: p.default_value.clone(),
            required: p.default_value.is_none(),
            help: p.docs.as_ref().map(doc_text),
        })
        .collect();
    // Starlark's parsed docs drop the Args:/Returns: sections and join the
    // first paragraph into one line; the raw docstring keeps them as written.
    // It is only used if it is this function's: a name can be rebound.
    let raw = raw_docstring
        .map(dedent_docstring)
        .filter(|d| squash(d.split("\n\n").next().unwrap_or("")) == squash(&docs.summary));
    let summary = raw
        .as_deref()
        .and_then(|d| d.lines().next())
        .unwrap_or(&docs.summary)
        .to_owned();
    FunctionInfo {
        name: name.to_owned(),
        summary,
        doc: raw.unwrap_or_else(|| doc_text(docs)),
        params,
        returns: (doc.ret.typ != Ty::any()).then(|| doc.ret.typ.to_string()),
    }
}

fn doc_text(docs: &DocString) -> String {
    let mut text = docs.summary.clone();
    for part in [&docs.details, &docs.examples].into_iter().flatten() {
        text.push_str("\n\n");
        text.push_str(part);
    }
    text
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The docstring with its first line trimmed and the rest dedented, as
/// Python's `inspect.cleandoc` does.
fn dedent_docstring(raw: &str) -> String {
    let mut lines = raw.lines();
    let first = lines.next().unwrap_or("").trim();
    let rest: Vec<&str> = lines.collect();
    let indent = rest
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = vec![first.to_owned()];
    out.extend(
        rest.iter()
            .map(|l| l.get(indent..).unwrap_or("").trim_end().to_owned()),
    );
    out.join("\n").trim().to_owned()
}

/// Where a top-level `def` of kiln.star is, and its raw docstring.
#[derive(Clone)]
struct DefSite {
    docstring: Option<String>,
    signature: FileSpan,
    params: HashMap<String, FileSpan>,
}

fn top_level_defs(ast: &AstModule) -> HashMap<String, DefSite> {
    use starlark::syntax::ast::{AstLiteral, ExprP, ParameterP, StmtP};
    let mut out = HashMap::new();
    let top: Vec<_> = match &ast.statement().node {
        StmtP::Statements(stmts) => stmts.iter().collect(),
        _ => vec![ast.statement()],
    };
    for stmt in top {
        let StmtP::Def(def) = &stmt.node else {
            continue;
        };
        // A body of one statement is not wrapped in `Statements`.
        let first = match &def.body.node {
            StmtP::Statements(body) => body.first(),
            _ => Some(&*def.body),
        };
        let docstring = first.and_then(|first| match &first.node {
            StmtP::Expression(expr) => match &expr.node {
                ExprP::Literal(AstLiteral::String(s)) => Some(s.node.clone()),
                _ => None,
            },
            _ => None,
        });
        let params = def
            .params
            .iter()
            .filter_map(|p| match &p.node {
                ParameterP::Normal(name, ..)
                | ParameterP::Args(name, _)
                | ParameterP::KwArgs(name, _) => {
                    Some((name.node.ident.clone(), ast.file_span(p.span)))
                }
                ParameterP::Slash | ParameterP::NoArgs => None,
            })
            .collect();
        out.insert(
            def.name.node.ident.clone(),
            DefSite {
                docstring,
                signature: ast.file_span(def.signature_span()),
                params,
            },
        );
    }
    out
}

/// Gives an error raised while binding a call's arguments (before any of the
/// function's code ran, so starlark has no position for it) the position of
/// the parameter it is about, or else of the function's signature.
fn locate_call_error(mut err: starlark::Error, site: Option<&DefSite>) -> starlark::Error {
    let Some(site) = site else {
        return err;
    };
    if err.span().is_some() {
        return err;
    }
    let text = err.to_string();
    let param = text
        .split("for argument `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .and_then(|name| site.params.get(name));
    let span = param.unwrap_or(&site.signature);
    err.set_span(span.span, &span.file);
    err
}

struct Loaded {
    module: FrozenModule,
    defs: HashMap<String, DefSite>,
}

/// Loads a file and, first, the files it loads; one per evaluation.
struct Loader<'a> {
    /// Canonical repository root.
    root: PathBuf,
    ctx: &'a Context,
    globals: &'a Globals,
    dialect: Dialect,
    /// Loaded files by path relative to the root, so that a file loaded
    /// twice is evaluated once and its values are shared.
    modules: RefCell<HashMap<PathBuf, FrozenModule>>,
    /// The files being loaded, outermost first, to detect cycles.
    stack: RefCell<Vec<PathBuf>>,
    /// Every file evaluated, in the order evaluation finished.
    evaluated: RefCell<Vec<PathBuf>>,
}

impl Loader<'_> {
    /// `rel` is relative to the root, normalized, and exists.
    fn load(&self, rel: &Path) -> Result<Loaded, Error> {
        let name = display(rel);
        let source = std::fs::read_to_string(self.root.join(rel)).map_err(|e| Error::Load {
            message: format!("cannot read {name}: {e}"),
        })?;
        // Parsed under the root-relative name: every position starlark
        // reports is then `kiln.star:3:5` or `lib/go.star:10:1`.
        crate::limits::check_expression_size(&name, &source)?;
        let ast = match AstModule::parse(&name, source.clone(), &self.dialect) {
            Ok(ast) => ast,
            // Starlark places an error at the very end of a file that ends
            // in a newline at 1:1 with no source line. Without the final
            // newlines (which change nothing else) the same error is placed
            // on the last line, where the unfinished code is.
            Err(e) => {
                let trimmed = source.trim_end_matches(['\n', '\r']);
                let e = match AstModule::parse(&name, trimmed.to_owned(), &self.dialect) {
                    Err(at_end) if trimmed.len() < source.len() => at_end,
                    _ => e,
                };
                return Err(from_starlark(e, Phase::Parse));
            }
        };
        let defs = top_level_defs(&ast);

        self.stack.borrow_mut().push(rel.to_owned());
        let result = self.evaluate(rel, ast);
        self.stack.borrow_mut().pop();
        let module = result?;
        self.evaluated.borrow_mut().push(rel.to_owned());
        Ok(Loaded { module, defs })
    }

    fn evaluate(&self, rel: &Path, ast: AstModule) -> Result<FrozenModule, Error> {
        let mut deps = HashMap::new();
        let loads: Vec<(String, FileSpan)> = ast
            .loads()
            .into_iter()
            .map(|l| (l.module_id.to_owned(), l.span))
            .collect();
        for (id, span) in loads {
            let target = self
                .resolve(rel, &id)
                .map_err(|why| load_error(&span, &id, &why))?;
            let cached = self.modules.borrow().get(&target).cloned();
            let module = match cached {
                Some(m) => m,
                None => {
                    let stack = self.stack.borrow().clone();
                    if let Some(start) = stack.iter().position(|p| *p == target) {
                        let mut cycle: Vec<String> =
                            stack[start..].iter().map(|p| display(p)).collect();
                        cycle.push(display(&target));
                        return Err(load_error(
                            &span,
                            &id,
                            &format!("load cycle: {}", cycle.join(" -> ")),
                        ));
                    }
                    let m = self.load(&target)?.module;
                    self.modules.borrow_mut().insert(target.clone(), m.clone());
                    m
                }
            };
            deps.insert(id, module);
        }

        let loader = MapLoader(deps);
        Module::with_temp_heap(|module| {
            {
                let mut eval = Evaluator::new(&module);
                eval.set_loader(&loader);
                eval.extra = Some(self.ctx);
                let engine = &self.ctx.engine;
                self.ctx.limits.apply(&mut eval, || engine.is_cancelled());
                if let Err(e) = eval.eval_module(ast, self.globals) {
                    let what = format!("evaluating {}", display(rel));
                    if let Some(stopped) =
                        self.ctx
                            .limits
                            .exceeded(&mut eval, engine.is_cancelled(), &what)
                    {
                        return Err(stopped);
                    }
                    return Err(from_starlark(e, Phase::Eval));
                }
            }
            module.freeze().map_err(|e| Error::Eval {
                message: format!("{}: {e:?}", display(rel)),
            })
        })
    }

    /// Resolves a `load()` path against the loading file's directory,
    /// refusing anything outside the repository.
    fn resolve(&self, from: &Path, id: &str) -> Result<PathBuf, String> {
        if id.is_empty() {
            return Err("the path is empty".to_owned());
        }
        if id.starts_with('/') || id.starts_with('@') {
            return Err(format!(
                "load paths are relative to the loading file ({}), not absolute",
                display(from)
            ));
        }
        let base = from.parent().unwrap_or(Path::new(""));
        let mut out = PathBuf::new();
        for component in base.join(id).components() {
            match component {
                Component::Normal(c) => out.push(c),
                Component::CurDir => {}
                Component::ParentDir => {
                    if !out.pop() {
                        return Err(format!("{id} is outside the repository"));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("{id} is outside the repository"));
                }
            }
        }
        let full = self.root.join(&out);
        if !full.is_file() {
            return Err(format!("{} does not exist", display(&out)));
        }
        // A symlink may lead out of the repository even when the path does not.
        match full.canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(out),
            Ok(_) => Err(format!("{} leads outside the repository", display(&out))),
            Err(e) => Err(format!("cannot resolve {}: {e}", display(&out))),
        }
    }
}

fn display(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

/// A load error rendered like starlark's own: location, message, and the
/// `load(...)` line with the path underlined.
fn load_error(span: &FileSpan, id: &str, why: &str) -> Error {
    let message = format!("cannot load {id:?}: {why}");
    let mut err = starlark::Error::new_other(anyhow::anyhow!("{message}"));
    err.set_span(span.span, &span.file);
    Error::Load {
        message: crate::error::render(&err),
    }
}

struct MapLoader(HashMap<String, starlark::environment::FrozenModule>);

impl FileLoader for MapLoader {
    fn load(&self, path: &str) -> starlark::Result<FrozenModule> {
        self.0.get(path).cloned().ok_or_else(|| {
            // Every load() of the file was resolved before evaluation.
            starlark::Error::new_other(anyhow::anyhow!("internal error: {path} was not loaded"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docstrings_are_dedented_like_cleandoc() {
        let raw =
            "Builds.\n\n    Details here,\n      indented more.\n\n    Args:\n        x: y\n    ";
        assert_eq!(
            dedent_docstring(raw),
            "Builds.\n\nDetails here,\n  indented more.\n\nArgs:\n    x: y"
        );
        assert_eq!(dedent_docstring("  One line.  "), "One line.");
        assert_eq!(
            dedent_docstring("\n    Starts on the next line.\n    "),
            "Starts on the next line."
        );
    }

    #[test]
    fn finds_the_root_upwards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b/c");
        std::fs::create_dir_all(&nested).expect("mkdir");
        assert_eq!(find_root(&nested), None);
        std::fs::write(dir.path().join("a/kiln.star"), "").expect("write");
        assert_eq!(find_root(&nested), Some(dir.path().join("a")));
        assert_eq!(find_root(&dir.path().join("a")), Some(dir.path().join("a")));
        // A directory named kiln.star is not a pipeline.
        std::fs::create_dir_all(dir.path().join("a/b/kiln.star")).expect("mkdir");
        assert_eq!(find_root(&nested), Some(dir.path().join("a")));
    }
}
