//! Function signatures as the command line sees them, and turning flag
//! values into typed arguments.

use std::path::Path;

use kiln_engine::Engine;

use crate::error::Error;

/// A documented top-level function of kiln.star: one CLI command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    pub name: String,
    /// The first line of the docstring.
    pub summary: String,
    /// The whole docstring (dedented; an `Args:` section is kept as written).
    pub doc: String,
    pub params: Vec<ParamInfo>,
    /// The return annotation, if any (`Container`, `list[Container]`, ...).
    pub returns: Option<String>,
}

impl FunctionInfo {
    /// The parameter a `--flag` or parameter name refers to.
    pub fn param(&self, name_or_flag: &str) -> Option<&ParamInfo> {
        self.params
            .iter()
            .find(|p| p.name == name_or_flag || p.flag == name_or_flag)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// The parameter's name in Starlark (`source_dir`).
    pub name: String,
    /// The flag, without dashes, in kebab-case (`source-dir`).
    pub flag: String,
    pub ty: ParamType,
    /// The default value as Starlark would print it (`"main"`, `3`, `None`).
    pub default: Option<String>,
    /// Whether the parameter has no default.
    pub required: bool,
    /// The parameter's description from the docstring's `Args:` section.
    pub help: Option<String>,
}

/// The parameter types a command-line value can be turned into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamType {
    Directory,
    File,
    Secret,
    Str,
    Int,
    Bool,
    ListStr,
    CacheVolume,
    /// Given on the command line as an image reference.
    Container,
    /// Cannot be given on the command line: why (the annotation, or
    /// "missing type annotation").
    Unsupported(String),
}

impl ParamType {
    /// Maps an annotation, as starlark prints the type, to a parameter type.
    /// `T | None` is `T`: leaving the flag out passes the default.
    pub(crate) fn from_annotation(ty: &str) -> ParamType {
        let ty = ty.trim();
        let ty = ty
            .strip_suffix("| None")
            .or_else(|| ty.strip_prefix("None |"))
            .map(str::trim)
            .unwrap_or(ty);
        match ty {
            "Directory" => ParamType::Directory,
            "File" => ParamType::File,
            "Secret" => ParamType::Secret,
            "str" => ParamType::Str,
            "int" => ParamType::Int,
            "bool" => ParamType::Bool,
            "list[str]" => ParamType::ListStr,
            "CacheVolume" => ParamType::CacheVolume,
            "Container" => ParamType::Container,
            // What an unannotated parameter's type is.
            "typing.Any" | "Any" => ParamType::Unsupported("missing type annotation".to_owned()),
            other => ParamType::Unsupported(other.to_owned()),
        }
    }

    /// The type as written in kiln.star (`Directory`, `list[str]`).
    pub fn name(&self) -> String {
        match self {
            ParamType::Directory => "Directory".to_owned(),
            ParamType::File => "File".to_owned(),
            ParamType::Secret => "Secret".to_owned(),
            ParamType::Str => "str".to_owned(),
            ParamType::Int => "int".to_owned(),
            ParamType::Bool => "bool".to_owned(),
            ParamType::ListStr => "list[str]".to_owned(),
            ParamType::CacheVolume => "CacheVolume".to_owned(),
            ParamType::Container => "Container".to_owned(),
            ParamType::Unsupported(why) => why.clone(),
        }
    }

    /// How to write a value of this type on the command line.
    pub fn hint(&self) -> &str {
        match self {
            ParamType::Directory => "a host path",
            ParamType::File => "a host path",
            ParamType::Secret => "env:NAME or file:PATH",
            ParamType::Str => "text",
            ParamType::Int => "a whole number",
            ParamType::Bool => "true or false",
            ParamType::ListStr => "comma-separated or repeated",
            ParamType::CacheVolume => "a cache volume name",
            ParamType::Container => "an image reference",
            ParamType::Unsupported(_) => "cannot be given on the command line",
        }
    }

    pub fn is_supported(&self) -> bool {
        !matches!(self, ParamType::Unsupported(_))
    }
}

/// A typed argument for [`Pipeline::call`](crate::Pipeline::call).
#[derive(Clone)]
pub enum ArgValue {
    Str(String),
    Int(i64),
    Bool(bool),
    ListStr(Vec<String>),
    Directory(kiln_engine::Directory),
    File(kiln_engine::File),
    Secret(kiln_engine::Secret),
    /// A cache volume's name.
    CacheVolume(String),
    Container(kiln_engine::Container),
}

impl ArgValue {
    /// The parameter type this value is for.
    pub fn ty(&self) -> ParamType {
        match self {
            ArgValue::Str(_) => ParamType::Str,
            ArgValue::Int(_) => ParamType::Int,
            ArgValue::Bool(_) => ParamType::Bool,
            ArgValue::ListStr(_) => ParamType::ListStr,
            ArgValue::Directory(_) => ParamType::Directory,
            ArgValue::File(_) => ParamType::File,
            ArgValue::Secret(_) => ParamType::Secret,
            ArgValue::CacheVolume(_) => ParamType::CacheVolume,
            ArgValue::Container(_) => ParamType::Container,
        }
    }
}

// Values a user would not want printed (secrets) are shown by label only;
// engine values are not Debug, so every variant is written by hand.
impl std::fmt::Debug for ArgValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgValue::Str(s) => write!(f, "Str({s:?})"),
            ArgValue::Int(i) => write!(f, "Int({i})"),
            ArgValue::Bool(b) => write!(f, "Bool({b})"),
            ArgValue::ListStr(l) => write!(f, "ListStr({l:?})"),
            ArgValue::Directory(_) => write!(f, "Directory(..)"),
            ArgValue::File(_) => write!(f, "File(..)"),
            ArgValue::Secret(s) => write!(f, "{s:?}"),
            ArgValue::CacheVolume(name) => write!(f, "CacheVolume({name:?})"),
            ArgValue::Container(_) => write!(f, "Container(..)"),
        }
    }
}

/// Parses the raw value(s) given for one parameter's flag. `raw` holds one
/// entry per occurrence of the flag; only `list[str]` may be repeated (its
/// entries concatenate, each split on commas).
pub fn parse_arg(engine: &Engine, param: &ParamInfo, raw: &[String]) -> Result<ArgValue, Error> {
    let bad = |message: String| Error::BadArgument {
        flag: param.flag.clone(),
        message,
    };
    let expected = |got: &str| {
        bad(format!(
            "expected {} ({}), got {got:?}",
            param.ty.name(),
            param.ty.hint()
        ))
    };
    // Every type but list[str] takes exactly one value.
    let single = || match raw {
        [one] => Ok(one.as_str()),
        [] => Err(bad("no value given".to_owned())),
        _ => Err(bad(format!(
            "given {} times; a {} flag takes one value",
            raw.len(),
            param.ty.name()
        ))),
    };
    match &param.ty {
        ParamType::ListStr => Ok(ArgValue::ListStr(
            raw.iter()
                .flat_map(|r| r.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        ParamType::Str => Ok(ArgValue::Str(single()?.to_owned())),
        ParamType::Int => {
            let value = single()?;
            value
                .trim()
                .parse::<i64>()
                .map(ArgValue::Int)
                .map_err(|_| expected(value))
        }
        ParamType::Bool => {
            let value = single()?;
            match value.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(ArgValue::Bool(true)),
                "false" | "no" | "0" => Ok(ArgValue::Bool(false)),
                _ => Err(expected(value)),
            }
        }
        ParamType::Directory => {
            let value = single()?;
            let path = Path::new(value);
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => Ok(ArgValue::Directory(engine.host_directory(path))),
                Ok(_) => Err(bad(format!("{value} is not a directory"))),
                Err(e) => Err(bad(missing("directory", value, &e))),
            }
        }
        ParamType::File => {
            let value = single()?;
            let path = Path::new(value);
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() => Ok(ArgValue::File(engine.host_file(path))),
                Ok(_) => Err(bad(format!("{value} is not a regular file"))),
                Err(e) => Err(bad(missing("file", value, &e))),
            }
        }
        ParamType::Secret => {
            let value = single()?;
            if let Some(var) = value.strip_prefix("env:") {
                if var.is_empty() {
                    return Err(expected(value));
                }
                if std::env::var_os(var).is_none() {
                    return Err(bad(format!("environment variable {var} is not set")));
                }
                engine
                    .secret_from_env(var)
                    .map(ArgValue::Secret)
                    .map_err(|e| bad(e.to_string()))
            } else if let Some(path) = value.strip_prefix("file:") {
                if path.is_empty() {
                    return Err(expected(value));
                }
                match std::fs::metadata(path) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return Err(bad(format!("{path} is not a regular file"))),
                    Err(e) => return Err(bad(missing("secret file", path, &e))),
                }
                engine
                    .secret_from_file(path)
                    .map(ArgValue::Secret)
                    .map_err(|e| bad(e.to_string()))
            } else {
                // The raw value may be the secret itself: never echo it.
                Err(bad(format!(
                    "expected {} ({}); the value given has neither prefix",
                    param.ty.name(),
                    param.ty.hint()
                )))
            }
        }
        ParamType::CacheVolume => {
            let value = single()?;
            if value.trim().is_empty() {
                return Err(expected(value));
            }
            Ok(ArgValue::CacheVolume(value.to_owned()))
        }
        ParamType::Container => {
            let value = single()?;
            if value.trim().is_empty() {
                return Err(expected(value));
            }
            Ok(ArgValue::Container(engine.container(value)))
        }
        ParamType::Unsupported(why) => Err(bad(format!(
            "parameter {} cannot be given on the command line ({why})",
            param.name
        ))),
    }
}

fn missing(what: &str, path: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("{what} {path} does not exist")
    } else {
        format!("cannot read {what} {path}: {e}")
    }
}

/// Checks that every required parameter is given. Names in `given` may be
/// parameter names or flags.
pub fn check_args(info: &FunctionInfo, given: &[(String, ArgValue)]) -> Result<(), Error> {
    for (name, _) in given {
        if info.param(name).is_none() {
            return Err(unknown_param(info, name));
        }
    }
    for param in info.params.iter().filter(|p| p.required) {
        let present = given
            .iter()
            .any(|(name, _)| *name == param.name || *name == param.flag);
        if !present {
            return Err(Error::MissingArgument {
                flag: param.flag.clone(),
                ty: param.ty.clone(),
            });
        }
    }
    Ok(())
}

pub(crate) fn unknown_param(info: &FunctionInfo, name: &str) -> Error {
    let known: Vec<String> = info
        .params
        .iter()
        .map(|p| format!("--{}", p.flag))
        .collect();
    Error::BadArgument {
        flag: name.to_owned(),
        message: if known.is_empty() {
            format!("{} takes no parameters", info.name)
        } else {
            format!(
                "{} has no such parameter; it takes {}",
                info.name,
                known.join(", ")
            )
        },
    }
}

/// `source_dir` -> `source-dir`.
pub(crate) fn flag_name(param: &str) -> String {
    param.replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations() {
        let cases = [
            ("Directory", ParamType::Directory),
            ("File", ParamType::File),
            ("Secret", ParamType::Secret),
            ("str", ParamType::Str),
            ("int", ParamType::Int),
            ("bool", ParamType::Bool),
            ("list[str]", ParamType::ListStr),
            ("CacheVolume", ParamType::CacheVolume),
            ("Container", ParamType::Container),
            ("str | None", ParamType::Str),
            ("None | int", ParamType::Int),
            (
                "typing.Any",
                ParamType::Unsupported("missing type annotation".into()),
            ),
            ("list[int]", ParamType::Unsupported("list[int]".into())),
            ("str | int", ParamType::Unsupported("str | int".into())),
        ];
        for (annotation, want) in cases {
            assert_eq!(ParamType::from_annotation(annotation), want, "{annotation}");
        }
    }

    #[test]
    fn flags_are_kebab_case() {
        assert_eq!(flag_name("source_dir"), "source-dir");
        assert_eq!(flag_name("x"), "x");
        assert_eq!(flag_name("a_b_c"), "a-b-c");
    }
}
