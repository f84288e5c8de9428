//! Every shaders/*.wgsl file parses and validates with naga (no adapter needed), with the
//! capabilities the backend may enable (shader-f16, subgroups, and unpack2x16float, which every
//! Vulkan/Metal/DX12 adapter has). A file whose first line is `// needs: a.wgsl b.wgsl` is
//! validated with those files prepended in that order, as its wrapper's `concat!` compiles it.

use ::wgpu::naga;

fn validate(name: &str, source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    let caps = naga::valid::Capabilities::SUBGROUP | naga::valid::Capabilities::SHADER_FLOAT16 | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    Ok(())
}

#[test]
fn every_shader_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("shaders/").filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "wgsl")).collect();
    files.sort();
    assert!(files.len() > 1, "no shaders found in {}", dir.display());
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let text = std::fs::read_to_string(path).expect("readable shader");
        let mut source = String::new();
        if let Some(needs) = text.lines().next().and_then(|l| l.strip_prefix("// needs:")) {
            for dep in needs.split_whitespace() {
                source += &std::fs::read_to_string(dir.join(dep)).unwrap_or_else(|e| panic!("{name} needs {dep}: {e}"));
            }
        }
        source += &text;
        match validate(&name, &source) {
            Ok(()) => eprintln!("{name}: valid"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
