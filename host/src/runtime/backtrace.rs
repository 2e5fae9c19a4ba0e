//! A guest trap's backtrace in one line, for the log and the dead-letter reason: the handler's
//! own functions, innermost first, with Rust names demangled. Components keep their name section
//! (`strip = "debuginfo"` in the handler and fixture profiles) so wasmtime can name the frames.

use wasmtime::WasmBacktrace;

/// Frames worth naming: a panic's first frames are the standard library's panic machinery, and
/// the last ones the bindings' export glue, neither of which says where the handler went wrong.
const MAX_FRAMES: usize = 6;

/// `at <notifier::…::__SdkExport as sdk::bindings::Guest>::on_status_updated <- sdk::bindings::…`,
/// or `None` when no frame has a name (a component built without its name section). Release
/// builds inline small functions into their callers, so the innermost named frame may be the
/// export glue; a panic's own message carries its file and line.
pub(super) fn render(trace: &WasmBacktrace) -> Option<String> {
    let names: Vec<String> = trace
        .frames()
        .iter()
        .filter_map(|f| f.func_name())
        .map(|raw| format!("{:#}", rustc_demangle::demangle(raw)))
        .collect();
    if names.is_empty() {
        return None;
    }
    let own: Vec<&str> = names.iter().map(String::as_str).filter(|n| !is_plumbing(n)).collect();
    // A trap entirely inside plumbing (an allocation failure, say) still shows where it was.
    let shown: Vec<&str> = match own.is_empty() {
        true => names.iter().map(String::as_str).take(MAX_FRAMES).collect(),
        false => own.into_iter().take(MAX_FRAMES).collect(),
    };
    Some(format!("at {}", shown.join(" <- ")))
}

fn is_plumbing(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "std::",
        "core::",
        "alloc::",
        "<std::",
        "<core::",
        "<alloc::",
        "__rust",
        "rust_panic",
        "wit_bindgen",
        "cabi_",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || name.starts_with("__")
        || matches!(name, "abort" | "exit" | "proc_exit")
}
