//! Helpers for the vision-encoder tests (CLIP, DINOv2): reference comparison of a forward pass
//! and its feature-layer shortcut, and edited copies of fixture checkpoints.

use visword::models::clip::ClipVisionModel;
use visword::models::dinov2::Dinov2Model;
use visword::models::vit::{self, VisionOutput};
use visword::weights::save_safetensors;
use visword::{Backend, Error, Tensor, Weights};

use super::files::TempDir;
use super::{assert_tensor_close, fixtures_dir, Tol, F32_MODEL};

/// Preprocessing reproduces the backend it targets bit for bit on the test photo (both are
/// integer resamplers; the only float step is the final normalisation, done in the same order).
/// Allow a few ulps anyway.
pub const PIXELS_EXACT: Tol = Tol { atol: 1e-5, rtol: 1e-6 };

/// Tensor `name` of `w`, or a panic naming it.
pub fn get(w: &Weights, name: &str) -> Tensor {
    w.get(name).unwrap_or_else(|e| panic!("{e}"))
}

/// What `check_run` needs of an encoder.
pub trait Encoder {
    fn num_layers(&self) -> usize;
    fn patch_size(&self) -> usize;
    fn forward(&self, be: &Backend, pixel_values: &Tensor, output_hidden_states: bool) -> visword::Result<VisionOutput>;
    fn feature_layer(&self, be: &Backend, pixel_values: &Tensor, layer: i64) -> visword::Result<Tensor>;
}

/// Both models have these as inherent methods of the same signatures.
macro_rules! impl_encoder {
    ($model:ty) => {
        impl Encoder for $model {
            fn num_layers(&self) -> usize {
                self.num_layers()
            }
            fn patch_size(&self) -> usize {
                self.config.patch_size
            }
            fn forward(&self, be: &Backend, px: &Tensor, hidden: bool) -> visword::Result<VisionOutput> {
                self.forward(be, px, hidden)
            }
            fn feature_layer(&self, be: &Backend, px: &Tensor, layer: i64) -> visword::Result<Tensor> {
                self.feature_layer(be, px, layer)
            }
        }
    };
}

impl_encoder!(ClipVisionModel);
impl_encoder!(Dinov2Model);

/// Compare a forward pass on `{run}.pixel_values` against run `run` of a fixture's reference
/// (every hidden state, the last one and the pooled output), and check the feature-layer path,
/// which stops early, gives exactly the same hidden states.
pub fn check_run(model: &impl Encoder, reference: &Weights, run: &str) {
    let be = Backend::cpu();
    let px = get(reference, &format!("{run}.pixel_values"));
    let out = model.forward(&be, &px, true).unwrap();
    let n = model.num_layers();
    assert_eq!(out.hidden_states.len(), n + 1);
    for (i, h) in out.hidden_states.iter().enumerate() {
        assert_tensor_close(&format!("{run}.hidden_states.{i}"), h, &get(reference, &format!("{run}.hidden_states.{i}")), F32_MODEL);
    }
    assert_tensor_close(&format!("{run}.last_hidden_state"), &out.last_hidden_state, &get(reference, &format!("{run}.last_hidden_state")), F32_MODEL);
    assert_tensor_close(&format!("{run}.pooler_output"), &out.pooler_output, &get(reference, &format!("{run}.pooler_output")), F32_MODEL);
    let s = px.shape();
    assert_eq!(out.grid, (s[2] / model.patch_size(), s[3] / model.patch_size()));

    for k in [-(n as i64) - 1, -2, -1, 0, 1] {
        let f = model.feature_layer(&be, &px, k).unwrap();
        let idx = vit::resolve_layer(k, n).unwrap();
        assert_eq!(f.shape(), out.hidden_states[idx].shape());
        assert_eq!(f.to_f32_vec().unwrap(), out.hidden_states[idx].to_f32_vec().unwrap(), "feature_layer({k})");
    }
    assert!(matches!(model.feature_layer(&be, &px, n as i64 + 1), Err(Error::InvalidArgument { .. })));
}

/// Copy fixture directory `name` (its JSON files and `model.safetensors`) into a scratch
/// directory, letting `edit` change the tensors (read as f32) before they are written back.
pub fn edited_copy(name: &str, tag: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> TempDir {
    let src = fixtures_dir().join(name);
    let d = TempDir::new(tag);
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
        }
    }
    let w = Weights::open(src.join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        w.names().map(|n| (n.to_string(), Tensor::from_f32(get(&w, n).to_f32_vec().unwrap(), get(&w, n).shape().to_vec()).unwrap())).collect();
    edit(&mut tensors);
    save_safetensors(&d.join("model.safetensors"), &tensors, None).unwrap();
    d
}
