//! A three-stage pipeline written against the Rust API: check the sources,
//! build a "site" from them, test the build, and export the result.
//!
//!     cargo run --example demo -- SITE_DIR OUT_DIR
//!
//! Uses the image `busybox:latest` (scripts/setup.sh imports one) and the
//! store in $KILN_STORE. Run it twice: the second run executes nothing.

use std::time::Instant;

use kiln_engine::{CacheVolume, Engine, EngineOptions, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(site), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: demo SITE_DIR OUT_DIR");
        std::process::exit(2);
    };
    let started = Instant::now();
    let engine = Engine::open(EngineOptions::default())?;
    let mut events = engine.subscribe();
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::Started { step, name, .. } => eprintln!("#{} {name}", step.0),
                Event::Cached { step, name, .. } => eprintln!("#{} CACHED {name}", step.0),
                Event::Output { step, data, .. } => {
                    for line in String::from_utf8_lossy(&data).lines() {
                        eprintln!("#{} | {line}", step.0);
                    }
                }
                Event::Finished { step, duration, .. } => {
                    eprintln!("#{} DONE {:.2}s", step.0, duration.as_secs_f64())
                }
            }
        }
    });

    let source = engine.host_directory(&site);
    let base = engine
        .container("busybox:latest")
        .with_mounted_cache("/cache", &CacheVolume::new("demo-cache"))
        .with_directory("/src", &source)
        .with_workdir("/src");
    // Stage 1: lint. Stage 2: build. Stage 3: test the build.
    let lint = base.with_exec([
        "sh",
        "-c",
        "for f in *.txt; do [ -s \"$f\" ] || { echo \"$f is empty\"; exit 1; }; done; echo lint ok",
    ]);
    let build = base.with_exec([
        "sh",
        "-c",
        "mkdir -p /out && for f in *.txt; do { echo \"<h1>$f</h1>\"; sed 's/^/<p>/' \"$f\"; } > /out/${f%.txt}.html; done; ls /out | wc -l > /out/count",
    ]);
    let test = build.with_exec([
        "sh",
        "-c",
        "test $(cat /out/count) -gt 0 && grep -l '<h1>' /out/*.html | wc -l",
    ]);
    let (lint, test) = tokio::try_join!(lint.stdout(), test.stdout())?;
    eprintln!("lint: {}", lint.trim());
    eprintln!("pages built and checked: {}", test.trim());
    // Stage 4: export.
    build.directory("/out").export(&out).await?;
    eprintln!(
        "exported site to {out} in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    drop(engine);
    printer.abort();
    Ok(())
}
