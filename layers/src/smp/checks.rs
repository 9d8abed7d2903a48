//! The checks every smp decoder makes on what it is given: the channel list at build
//! time (what would fail inside smp, reported before any layer is made) and the
//! feature maps at forward time (count, rank and the channels of the maps it reads).
use tch::Tensor;
use terrahost_plugin_api::{PluginError, Result};

/// Checks the feature list a decoder receives: as many maps as the channel list it
/// was built for, every one `[B, C, H, W]`, and the maps at `used` with their
/// declared channels (the others are only counted, or only give a size).
pub fn check_maps(decoder: &str, xs: &[Tensor], channels: &[i64], used: &[usize]) -> Result<()> {
    if xs.len() != channels.len() {
        return Err(PluginError::forward_failed(format!(
            "the {decoder} decoder was built for {} feature maps (channels {channels:?}) but got {}",
            channels.len(),
            xs.len()
        )));
    }
    for (i, x) in xs.iter().enumerate() {
        let size = x.size();
        if size.len() != 4 {
            return Err(PluginError::forward_failed(format!(
                "feature map {i} must be [B, C, H, W], got shape {size:?}"
            )));
        }
        if used.contains(&i) && size[1] != channels[i] {
            return Err(PluginError::forward_failed(format!(
                "feature map {i} has {} channels but the {decoder} decoder was built for {} (channels {channels:?})",
                size[1], channels[i]
            )));
        }
    }
    Ok(())
}

/// [`check_maps`] for a decoder that reads the channels of every map from index `from` on.
pub fn check_maps_from(decoder: &str, xs: &[Tensor], channels: &[i64], from: usize) -> Result<()> {
    let used: Vec<usize> = (from..channels.len()).collect();
    check_maps(decoder, xs, channels, &used)
}

/// Refuses a non-positive width given by argument `name`.
pub fn check_width(name: &str, value: i64) -> Result<()> {
    if value <= 0 {
        return Err(PluginError::invalid_argument(format!(
            "`{name}` must be positive, got {value}"
        )));
    }
    Ok(())
}

/// Refuses channel lists with fewer than `min` maps (`why` says what needs them) or
/// with non-positive entries.
pub fn check_channels(decoder: &str, channels: &[i64], min: usize, why: &str) -> Result<()> {
    if channels.len() < min {
        return Err(PluginError::invalid_argument(format!(
            "the {decoder} decoder needs at least {min} feature maps ({why}), got the channel list {channels:?}"
        )));
    }
    if let Some(c) = channels.iter().find(|&&c| c <= 0) {
        return Err(PluginError::invalid_argument(format!(
            "channel counts must be positive, got {c} in {channels:?}"
        )));
    }
    Ok(())
}

/// smp's check that a U-Net-like decoder (MAnet, UNet++) gets one `decoder_channels`
/// entry per encoder stage (the depth is `len(encoder_channels) - 1`), plus what would
/// fail later: a depth below `min_depth` (`needs` says how many maps that takes) or a
/// non-positive channel count.
pub fn check_stages(
    decoder: &str,
    encoder_channels: &[i64],
    decoder_channels: &[i64],
    min_depth: usize,
    needs: &str,
) -> Result<()> {
    let depth = encoder_channels.len().saturating_sub(1);
    if depth != decoder_channels.len() {
        return Err(PluginError::invalid_argument(format!(
            "Model depth is {depth}, but you provide `decoder_channels` for {} blocks (channel list {:?})",
            decoder_channels.len(),
            encoder_channels
        )));
    }
    if depth < min_depth {
        return Err(PluginError::invalid_argument(format!(
            "the {decoder} decoder needs at least {needs}, got the channel list {encoder_channels:?}"
        )));
    }
    if let Some(c) = encoder_channels
        .iter()
        .chain(decoder_channels)
        .find(|&&c| c <= 0)
    {
        return Err(PluginError::invalid_argument(format!(
            "channel counts must be positive, got {c} (channels {encoder_channels:?}, decoder_channels \
             {decoder_channels:?})"
        )));
    }
    Ok(())
}
