//! `--precision`: puts a loaded model into the precision it runs in
//! ([`terrahost_layers::precision`] says what bfloat16 and int8 mean here).
use crate::error::HostError;
use tch::Device;
use terrahost_layers::precision::{self, Lowered, Precision};
use terrahost_plugin_api::sdk::DynModule;

/// Parses `--precision`, in one line when the name is not one terrahost runs.
pub fn parse(text: &str) -> Result<Precision, HostError> {
    text.parse()
        .map_err(|e: String| HostError::Usage(format!("--precision: {e}")))
}

/// Prepares `model`, with its weights loaded, for `precision` on `device`: for bfloat16
/// its matrix weights are converted once, here, and the forward is to run inside
/// [`Precision::run`]. bfloat16 is refused off the CPU (it is libtorch's CPU autocast).
/// On a CPU without native bfloat16 the emulated products are registered
/// ([`precision::emulate_products`], unless `TERRAHOST_BF16_EMULATION=0`) and a warning
/// says that bfloat16 is no faster than float32 there. `None` for float32, which changes
/// nothing, and for int8, whose linear weights are quantized at the first forward that
/// uses them (count them with [`precision::int8_packed`] afterwards).
pub fn prepare(
    model: &DynModule,
    precision: Precision,
    device: Device,
) -> Result<Option<Lowered>, HostError> {
    if precision == Precision::Fp32 {
        return Ok(None);
    }
    if device != Device::Cpu {
        return Err(HostError::Usage(format!(
            "--precision {precision} runs on the CPU (libtorch's CPU autocast); use --device cpu, or fp32 on {device:?}"
        )));
    }
    if precision == Precision::Int8 {
        return prepare_int8(model).map(|()| None);
    }
    if !precision::native_bf16() {
        // libtorch's own bfloat16 convolution is 10-50 times slower than float32 here;
        // the emulation gives the same numbers at about float32's speed.
        let emulated = std::env::var("TERRAHOST_BF16_EMULATION").map_or(true, |v| v != "0")
            && precision::emulate_products();
        tracing::warn!(
            "--precision bf16: this CPU has no native bfloat16 (AVX512_BF16, AMX or ARM BF16), so bfloat16 {}",
            if emulated {
                "is emulated: its numbers, computed in float32 (no faster than fp32)"
            } else {
                "runs libtorch's reference kernels, much slower than fp32"
            }
        );
    }
    // A model that keeps its heads in float32 (detectors) names the parts to lower.
    let prefixes = precision::bf16_prefixes(model);
    if prefixes.is_some() {
        // Measured on TerraTorch's detection configs (scripts/bench/precision_accuracy.sh bf16): the
        // backbone's rounding moves the detections of their synthetic models a lot.
        tracing::warn!(
            "--precision bf16 on a detector: its backbone runs in bfloat16 and its heads in float32; on \
             TerraTorch's detection configs (synthetic weights) only 59 % of the float64 detections were found \
             again, so check bf16 against fp32 on your own scenes before relying on it"
        );
    }
    let lowered = precision::lower_module(model, prefixes.as_deref());
    tracing::info!(
        "--precision bf16: {} weights ({:.1} M values) stored in bfloat16; the forward runs under CPU autocast",
        lowered.tensors,
        lowered.elements as f64 / 1e6
    );
    Ok(Some(lowered))
}

/// int8: registers the int8 linear kernel and says what it costs. Measured
/// (`scripts/bench/precision_accuracy.sh int8`, `scripts/bench/forward_pairs.py`): on the
/// corpus' synthetic weights every argmax decision is kept; on the catalog model with its
/// own random initialisation, terrahost's (and PyTorch's) int8 flips about 0.4 % of
/// float64's class decisions (bfloat16: 0.12-0.15 %).
fn prepare_int8(model: &DynModule) -> Result<(), HostError> {
    if !precision::int8_linears() {
        return Err(HostError::Usage(
            "--precision int8: this libtorch has no int8 operators (FBGEMM or another quantized engine); use fp32 or bf16"
                .into(),
        ));
    }
    let detector = precision::bf16_prefixes(model).is_some();
    tracing::warn!(
        "--precision int8: linear layers run in int8 (dynamic quantization, weights per channel); convolutions, \
         attention and norms stay float32. It flipped 0.4 % of the class decisions of a randomly initialised \
         Prithvi + UNet (bf16: 0.15 %){}: check int8 against fp32 on your own scenes before relying on it",
        if detector {
            "; a detector's heads stay float32, its backbone and necks run int8"
        } else {
            ""
        }
    );
    Ok(())
}

/// Under int8, the linear weights quantized so far (`linears_in_int8` of `run --json` and
/// `predict --json`); `None` in another precision.
pub fn linears_in_int8(precision: Precision) -> Option<i64> {
    (precision == Precision::Int8).then(precision::int8_packed)
}

/// After a forward under `precision`: warns, once per process, when int8 quantized no
/// linear layer (a convolutional model, a ResNet or a UNet, where `--precision int8`
/// changes nothing and gains nothing).
pub fn note_forward(precision: Precision) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if linears_in_int8(precision) == Some(0) {
        WARNED.call_once(|| {
            tracing::warn!(
                "--precision int8 changed nothing: this model has no linear layers (int8 quantizes only those; \
                 its convolutions stay float32), so it runs as fp32 would"
            )
        });
    }
}
