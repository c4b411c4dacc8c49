//! `transplant inspect --pid N [--heap] [--json]`: the typed view of a live process;
//! `transplant inspect --stacks N [--json]`: its threads' call stacks with their locals.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use tracer::{Pid, ProcessMemory};
use transplant::debuginfo::{Binary, Encoding, LoadOptions, Type};
use transplant::inspect::print::Printer;
use transplant::inspect::symbols::GdbSymbols;
use transplant::inspect::Global;
use transplant::state::live::{capture_process, Layered, LiveCapture};
use transplant::state::{Edge, Guess, Object, ObjectKind, StateGraph, Summary, Warning};

/// What to show.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The process.
    pub pid: i32,
    /// Also the heap objects reachable from the globals, and a summary of the graph.
    pub heap: bool,
    /// Machine-readable output.
    pub json: bool,
}

#[derive(Serialize)]
struct HeapObjectView {
    id: u32,
    addr: tracer::RemoteAddr,
    size: u64,
    #[serde(rename = "type")]
    ty: Option<String>,
    count: u64,
    value: String,
}

#[derive(Serialize)]
struct Report<'a> {
    pid: i32,
    executable: String,
    globals: &'a [Global],
    #[serde(skip_serializing_if = "Option::is_none")]
    heap: Option<HeapView<'a>>,
}

#[derive(Serialize)]
struct HeapView<'a> {
    objects: Vec<HeapObjectView>,
    edges: &'a [Edge],
    guesses: &'a [Guess],
    warnings: &'a [Warning],
    summary: Summary,
    times: transplant::state::live::CaptureTimes,
}

/// Runs `inspect`.
pub fn run(cfg: Config) -> anyhow::Result<ExitCode> {
    let pid = Pid::from_raw(cfg.pid);
    if !cfg.heap {
        let g = transplant::inspect::globals(pid)
            .with_context(|| format!("inspecting process {pid}"))?;
        let report = Report {
            pid: cfg.pid,
            executable: g.executable.display().to_string(),
            globals: &g.globals,
            heap: None,
        };
        emit(&report, cfg.json, None);
        if !cfg.json {
            let bad = g.warnings().count();
            println!(
                "# {} variables{}; process stopped {:.1} ms",
                g.globals.len(),
                if bad > 0 {
                    format!(", {bad} not readable")
                } else {
                    String::new()
                },
                g.stopped.as_secs_f64() * 1e3
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    let cap = capture_process(pid).with_context(|| format!("capturing process {pid}"))?;
    let live = ProcessMemory::new(pid);
    let memory = Layered {
        snapshot: &cap.memory,
        live: &live,
    };
    let globals = transplant::inspect::globals_from(pid, &cap.binary, &memory, cap.main_fs_base)
        .with_context(|| format!("rendering the globals of process {pid}"))?;
    let objects = heap_objects(pid, &cap, &memory)?;
    let report = Report {
        pid: cfg.pid,
        executable: cap.binary.path().display().to_string(),
        globals: &globals,
        heap: Some(HeapView {
            objects,
            edges: &cap.graph.edges,
            guesses: &cap.graph.guesses,
            warnings: &cap.graph.warnings,
            summary: cap.graph.summary(),
            times: cap.times,
        }),
    };
    emit(&report, cfg.json, Some(&cap));
    Ok(ExitCode::SUCCESS)
}

fn emit(report: &Report<'_>, json: bool, cap: Option<&LiveCapture>) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("the report serialises")
        );
        return;
    }
    for g in report.globals {
        match (&g.value, &g.warning) {
            (Some(v), _) => println!("{} = {v}", g.name),
            (None, w) => eprintln!(
                "warning: {} ({}): {}",
                g.name,
                g.type_name,
                w.as_deref().unwrap_or("not readable")
            ),
        }
    }
    let (Some(heap), Some(cap)) = (&report.heap, cap) else {
        return;
    };
    println!();
    for o in &heap.objects {
        let ty = match (&o.ty, o.count) {
            (Some(t), 1) => t.clone(),
            (Some(t), n) => format!("{t} [{n}]"),
            (None, _) => "?".into(),
        };
        println!(
            "#{} {} ({ty}, {} bytes) = {}",
            o.id, o.addr, o.size, o.value
        );
    }
    for w in heap.warnings {
        eprintln!("warning: {}", w.message);
    }
    print_summary(&cap.graph, heap);
}

fn print_summary(graph: &StateGraph, heap: &HeapView<'_>) {
    let s = &heap.summary;
    let pointers =
        s.typed_pointers + s.conservative_pointers + s.external_pointers + s.dangling_pointers;
    let guessed: u64 = graph.guesses.iter().map(|g| g.end - g.start).sum();
    println!(
        "# {} globals; {} heap objects, {} bytes; {pointers} pointers: {} typed, {} conservative, \
         {} external, {} dangling; {} ranges ({guessed} bytes) scanned conservatively; {} warnings",
        s.globals,
        s.heap_objects,
        s.heap_bytes,
        s.typed_pointers,
        s.conservative_pointers,
        s.external_pointers,
        s.dangling_pointers,
        s.guesses,
        s.warnings,
    );
    println!(
        "# process stopped {:.1} ms (copied {} bytes); heap walk {:.1} ms; graph {:.1} ms",
        heap.times.stopped_ms,
        heap.times.copied_bytes,
        heap.times.heap_walk_ms,
        heap.times.graph_ms
    );
}

/// Each heap object's value: in gdb's syntax for typed objects (arrays element by element),
/// as a string for character arrays, and as what is known for untyped ones.
fn heap_objects(
    pid: Pid,
    cap: &LiveCapture,
    memory: &Layered<'_>,
) -> anyhow::Result<Vec<HeapObjectView>> {
    let bin: &Binary = &cap.binary;
    let resolver = tracer::symbols::SymbolResolver::new(pid)
        .with_context(|| format!("reading the symbols of process {pid}"))?;
    let names = GdbSymbols::new(bin, resolver, LoadOptions::default());
    let printer = Printer::new(bin.types(), memory, &names);
    Ok(cap
        .graph
        .heap_objects()
        .map(|o| HeapObjectView {
            id: o.id.0,
            addr: o.addr,
            size: o.size,
            ty: o.ty.map(|t| bin.type_name(t)),
            count: o.count,
            value: render(bin, &printer, &cap.graph, o),
        })
        .collect())
}

fn render(bin: &Binary, printer: &Printer<'_>, graph: &StateGraph, o: &Object) -> String {
    let Some(ty) = o.ty else {
        let found = graph
            .guesses
            .iter()
            .filter(|g| g.object == o.id)
            .map(|g| g.pointers)
            .sum::<u32>();
        return format!(
            "<type unknown: scanned conservatively, {found} addresses of objects found>"
        );
    };
    debug_assert!(matches!(o.kind, ObjectKind::Heap));
    let stripped = bin.types().strip_typedefs_cv(ty);
    if let Type::Base {
        encoding: Encoding::SignedChar | Encoding::UnsignedChar,
        ..
    } = bin.ty(stripped)
    {
        let end = o
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(o.bytes.len());
        return format!("{:?}", String::from_utf8_lossy(&o.bytes[..end]));
    }
    let Some(esize) = bin.byte_size(ty).filter(|&s| s > 0) else {
        return "<type of unknown size>".into();
    };
    let mut parts = Vec::new();
    for i in 0..o.count {
        let start = (i * esize) as usize;
        let Some(bytes) = o.bytes.get(start..start + esize as usize) else {
            break;
        };
        let addr = tracer::RemoteAddr::new(o.addr.get() + i * esize);
        parts.push(match printer.print_inner(ty, bytes, addr) {
            Ok(v) => v,
            Err(e) => format!("<{e}>"),
        });
    }
    if o.count == 1 {
        parts.pop().unwrap_or_default()
    } else {
        format!("{{{}}}", parts.join(", "))
    }
}

/// Runs `inspect --stacks`: every thread, its frames innermost first as gdb's `bt` numbers
/// them, each frame's parameters and locals with their values.
pub fn run_stacks(pid: i32, json: bool) -> anyhow::Result<ExitCode> {
    let p = Pid::from_raw(pid);
    let s = transplant::inspect::stacks::stacks(p)
        .with_context(|| format!("reading the stacks of process {pid}"))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("the report serialises")
        );
        return Ok(ExitCode::SUCCESS);
    }
    for t in &s.threads {
        println!("Thread {} \"{}\":", t.tid, t.name);
        if let Some(e) = &t.error {
            println!("  <cannot unwind: {e}>");
        }
        let mut n = 0;
        for f in &t.frames {
            // Inlined calls are frames of their own, innermost first, as in gdb.
            let names: Vec<&String> = f.inline_chain.iter().rev().chain([&f.function]).collect();
            for (i, name) in names.iter().enumerate() {
                let fp = if f.unwound_by == transplant::stack::UnwoundBy::FramePointer {
                    " [frame pointer]"
                } else {
                    ""
                };
                let object = f
                    .object
                    .as_deref()
                    .and_then(|o| o.rsplit('/').next())
                    .unwrap_or("?");
                if i + 1 == names.len() {
                    println!("#{n:<2} {} in {name} ({object}+{:#x}){fp}", f.pc, f.offset);
                } else {
                    println!("#{n:<2} {} in {name} (inlined)", f.pc);
                }
                for l in f.locals.iter().filter(|l| &&l.function == name) {
                    match (&l.value, &l.warning) {
                        (Some(v), _) => println!("      {} = {v}", l.name),
                        (None, w) => println!(
                            "      {} = <{}>",
                            l.name,
                            w.as_deref().unwrap_or("not readable")
                        ),
                    }
                }
                n += 1;
            }
        }
        if let Some(end) = &t.end {
            if !matches!(
                end,
                transplant::stack::End::Outermost
                    | transplant::stack::End::EntryFunction(_)
                    | transplant::stack::End::NullReturnAddress
            ) {
                println!("  <stack ends early: {end:?}>");
            }
        }
        println!();
    }
    println!(
        "# {} threads, {} frames; process stopped {:.1} ms",
        s.threads.len(),
        s.frames,
        s.stopped.as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}
