//! Every shaders/*.wgsl file parses and validates with naga (no adapter needed), with the
//! capabilities the backend may enable (shader-f16, subgroups, cooperative matrices, and
//! unpack2x16float, which every Vulkan/Metal/DX12 adapter has), and naga writes it as SPIR-V (what
//! wgpu hands a Vulkan driver). A file whose first line is `// needs: a.wgsl b.wgsl` is validated
//! with those files prepended in that order, and one whose second line is `// enables: x y` with
//! `enable x; enable y;` in front of everything, as its wrapper's `concat!` compiles it.

use ::wgpu::naga;

fn validate(name: &str, source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    let caps = naga::valid::Capabilities::SUBGROUP
        | naga::valid::Capabilities::SHADER_FLOAT16
        | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
        | naga::valid::Capabilities::COOPERATIVE_MATRIX;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| format!("{name}: {}", e.emit_to_string(source)))?;
    let options = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
    naga::back::spv::write_vec(&module, &info, &options, None).map_err(|e| format!("{name}: SPIR-V: {e}"))?;
    Ok(())
}

/// The text a shader file is compiled as: `enable` directives, the files it needs, itself.
pub(super) fn assemble(dir: &std::path::Path, name: &str, text: &str) -> String {
    let mut lines = text.lines();
    let needs = lines.next().and_then(|l| l.strip_prefix("// needs:")).unwrap_or("");
    let enables = lines.next().and_then(|l| l.strip_prefix("// enables:")).unwrap_or("");
    let mut source: String = enables.split_whitespace().map(|e| format!("enable {e};\n")).collect();
    for dep in needs.split_whitespace() {
        source += &std::fs::read_to_string(dir.join(dep)).unwrap_or_else(|e| panic!("{name} needs {dep}: {e}"));
    }
    source + text
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
        match validate(&name, &assemble(&dir, &name, &text)) {
            Ok(()) => eprintln!("{name}: valid"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The wrappers' `concat!` sources are the files as `assemble` reads them (a shader whose
/// `enables` line and its wrapper's `enable` prefix disagree would validate here and fail there).
#[test]
fn cooperative_gemm_source_is_the_assembled_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let text = std::fs::read_to_string(dir.join("matmul_coop.wgsl")).expect("matmul_coop.wgsl");
    assert_eq!(super::matmul::MATMUL_COOP.source, assemble(&dir, "matmul_coop.wgsl", &text));
}

/// The small-tile attention module (attention_q8.wgsl in front of attention.wgsl) is no file of
/// its own: it validates and writes SPIR-V as its wrapper compiles it.
#[test]
fn small_tile_attention_module_validates() {
    validate("attention_q8 module", super::attention::ATTENTION_Q8.source).unwrap_or_else(|e| panic!("{e}"));
}

/// The GEMVs' batched builds (gemv_batch8.wgsl in place of gemv_batch1.wgsl) are no files of
/// their own: they validate and write SPIR-V as their wrappers compile them.
#[test]
fn batched_gemv_modules_validate() {
    use super::{gemv_many, matmul};
    for shader in [matmul::GEMV_BATCHED, matmul::GEMV_SUBGROUP_BATCHED, gemv_many::GEMV_MANY_BATCHED, gemv_many::GEMV_MANY_SUBGROUP_BATCHED] {
        assert!(shader.source.contains("const GEMV_BATCH: u32 = 8u;"), "{}", shader.name);
        validate(shader.name, shader.source).unwrap_or_else(|e| panic!("{e}"));
    }
}
