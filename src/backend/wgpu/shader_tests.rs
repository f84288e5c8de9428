//! Every shaders/*.wgsl file parses and validates with naga (no adapter needed), with the
//! capabilities the backend may enable (shader-f16, subgroups, and unpack2x16float, which every
//! Vulkan/Metal/DX12 adapter has). A file that starts with
//! `// needs: common.wgsl` is validated with common.wgsl prepended, as the wrappers compile it.

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
    let common = std::fs::read_to_string(dir.join("common.wgsl")).expect("shaders/common.wgsl");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("shaders/").filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "wgsl")).collect();
    files.sort();
    assert!(files.len() > 1, "no shaders found in {}", dir.display());
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let text = std::fs::read_to_string(path).expect("readable shader");
        let source = if text.starts_with("// needs: common.wgsl") { format!("{common}{text}") } else { text };
        match validate(&name, &source) {
            Ok(()) => eprintln!("{name}: valid"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
