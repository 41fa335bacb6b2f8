//! `softmax-ce wgsl --emit`: every module for every configuration, named by it, written for
//! wgpu-native (naga parses and validates each) or for the web (with the `enable` directives
//! Dawn and the browsers require).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn emit(dir: &Path, target: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_softmax-ce"))
        .args(["wgsl", "--emit"])
        .arg(dir)
        .args(["--target", target])
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file of `dir`, by name.
fn read_all(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read_to_string(e.path()).unwrap())
        })
        .collect()
}

/// A file name's parts: family, width, dtype, and the configuration tag.
fn parts(name: &str) -> (&str, &str, &str, String) {
    let stem = name
        .strip_suffix(".wgsl")
        .unwrap_or_else(|| panic!("{name}"));
    let fields: Vec<&str> = stem.split('-').collect();
    assert_eq!(fields.len(), 8, "{name}");
    assert!(fields[1] == "w1" || fields[1] == "w4", "{name}");
    assert!(fields[2] == "f32" || fields[2] == "f16", "{name}");
    for (field, prefix) in fields[3..7].iter().zip(["wg", "fwg", "rc", "sg"]) {
        let n = field
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{name}"));
        assert!(n.parse::<u32>().is_ok(), "{name}");
    }
    assert!(fields[7] == "tex" || fields[7] == "buf", "{name}");
    (fields[0], fields[1], fields[2], fields[3..].join("-"))
}

/// Whether `src` calls a subgroup builtin (`subgroupShuffleXor`, `subgroupBroadcast`, ...) or
/// reads a subgroup builtin value, outside comments.
fn uses_subgroups(src: &str) -> bool {
    src.lines().map(|l| l.split("//").next().unwrap()).any(|l| {
        l.contains("@builtin(subgroup_")
            || l.match_indices("subgroup").any(|(i, _)| {
                l[i + "subgroup".len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase())
            })
    })
}

#[test]
fn emit_writes_every_module_for_both_targets() {
    let native_dir = scratch("wgsl-native");
    let web_dir = scratch("wgsl-web");
    for (dir, target) in [(&native_dir, "native"), (&web_dir, "web")] {
        let out = emit(dir, target);
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let count = std::fs::read_dir(dir).unwrap().count();
        assert!(
            stdout.contains(&format!("wrote {count} {target} modules")),
            "{stdout}"
        );
    }
    let native = read_all(&native_dir);
    let web = read_all(&web_dir);
    assert_eq!(
        native.keys().collect::<Vec<_>>(),
        web.keys().collect::<Vec<_>>()
    );

    // Per configuration: every family at both widths (the training families at the scalar
    // one, the only one they run at), f16 for all but train_tex and linear, the texture
    // families only where the configuration runs them.
    let mut by_config: BTreeMap<String, BTreeSet<(&str, &str, &str)>> = BTreeMap::new();
    for name in native.keys() {
        let (family, width, dtype, config) = parts(name);
        by_config
            .entry(config)
            .or_default()
            .insert((family, width, dtype));
    }
    let families = [
        "reduce", "softmax", "loss", "grad", "matmul", "train", "copy", "fused", "backward",
        "linear",
    ];
    for (config, got) in &by_config {
        let mut want = BTreeSet::new();
        let tex = config.ends_with("-tex");
        let all = families.iter().chain(if tex {
            &["matmul_tex", "train_tex"][..]
        } else {
            &[][..]
        });
        for &family in all {
            let widths: &[&str] = if family.starts_with("train") {
                &["w1"]
            } else {
                &["w1", "w4"]
            };
            // Every family has an f16 variant but the texture training kernels and the linear
            // cross-entropy's (its blocks of products are f32).
            let dtypes: &[&str] = if !["train_tex", "linear"].contains(&family) {
                &["f32", "f16"]
            } else {
                &["f32"]
            };
            for &w in widths {
                for &d in dtypes {
                    want.insert((family, w, d));
                }
            }
        }
        assert_eq!(got, &want, "{config}");
    }
    // lavapipe's own configuration, and one without subgroups, are among them.
    assert!(
        by_config.contains_key("wg64-fwg128-rc256-sg8-tex"),
        "{by_config:?}"
    );
    assert!(
        by_config.contains_key("wg64-fwg128-rc256-sg1-buf"),
        "{by_config:?}"
    );
    assert!(by_config.keys().any(|c| c.starts_with("wg256-fwg256-rc1-")));

    for (name, src) in &native {
        let (_, _, dtype, _) = parts(name);
        let web_src = &web[name];
        // The web wants `enable subgroups;` before any subgroup builtin, naga refuses it.
        assert!(
            !src.lines().any(|l| l.starts_with("enable subgroups")),
            "{name}"
        );
        let subgroups = uses_subgroups(src);
        let mut directives = Vec::new();
        if dtype == "f16" {
            directives.push("enable f16;");
        }
        if subgroups {
            directives.push("enable subgroups;");
        }
        let web_head: Vec<&str> = web_src.lines().take(directives.len()).collect();
        assert_eq!(web_head, directives, "{name}");
        assert_eq!(src.starts_with("enable f16;"), dtype == "f16", "{name}");
        // Otherwise the same source.
        let body = |s: &str, n: usize| s.lines().skip(n).collect::<Vec<_>>().join("\n");
        assert_eq!(
            body(web_src, directives.len()),
            body(src, usize::from(dtype == "f16")),
            "{name}"
        );

        // And wgpu-native's front end takes each native module, validated with the
        // capabilities its device is asked for.
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        let mut caps = naga::valid::Capabilities::all();
        if !subgroups {
            caps -=
                naga::valid::Capabilities::SUBGROUP | naga::valid::Capabilities::SUBGROUP_BARRIER;
        }
        if dtype == "f32" {
            caps -= naga::valid::Capabilities::SHADER_FLOAT16;
        }
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
}

#[test]
fn a_failing_emit_replaces_no_file() {
    let dir = scratch("wgsl-fail");
    let first = scratch("wgsl-names");
    assert!(emit(&first, "native").status.success());
    let mut names: Vec<String> = read_all(&first).into_keys().collect();
    names.sort();
    // One module's name is taken by a directory, which no module may replace; another's file
    // holds old contents, which must survive the failure.
    std::fs::create_dir(dir.join(&names[names.len() - 1])).unwrap();
    std::fs::write(dir.join(&names[0]), "old").unwrap();
    let out = emit(&dir, "web");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("softmax-ce: error:") && stderr.contains("is a directory"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(dir.join(&names[0])).unwrap(), "old");
    // Nothing else was left behind, temporaries included.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
}

#[test]
fn a_bad_target_is_a_usage_error() {
    let dir = scratch("wgsl-usage");
    let out = Command::new(env!("CARGO_BIN_EXE_softmax-ce"))
        .args(["wgsl", "--emit"])
        .arg(&dir)
        .args(["--target", "metal"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}
