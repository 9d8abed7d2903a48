//! Mirrors timm's pretrained tags (`timm/models/_registry.py` and `_builder.py`, timm 1.0.31):
//! `split_model_name_tag` (a name `arch.tag` is the architecture `arch` with the pretrained
//! weights `tag`), `get_pretrained_cfg` (an unknown tag of a known architecture raises "Invalid
//! pretrained tag", even with `pretrained=False`) and the one field of a tag's pretrained cfg
//! that reaches the model with `pretrained=False`: `num_classes`, the classifier's default
//! (`_update_default_model_kwargs`; `in_chans` is 3 and `img_size` 224 in every tag listed
//! here, the defaults already). A features-only backbone drops the classifier, so for it a
//! tag changes nothing but the weights it names.
//!
//! The table lists, for every timm architecture this plugin builds, its tags as
//! `timm.list_pretrained("<arch>.*")` gives them, each with its pretrained cfg's
//! `num_classes`. Architectures without an entry (`prithvi_swin_B/L`, whose only cfg has no
//! tag, and the `prithvi_vit_*` names timm does not know) have no tags.
use std::collections::HashSet;
use terrahost_plugin_api::sdk::{Alias, Catalog};

/// `(architecture, [(tag, num_classes of the tag's pretrained cfg)])`.
pub(crate) const TAGS: &[(&str, &[(&str, i64)])] = &[
    (
        "resnet18",
        &[
            ("a1_in1k", 1000),
            ("a2_in1k", 1000),
            ("a3_in1k", 1000),
            ("fb_ssl_yfcc100m_ft_in1k", 1000),
            ("fb_swsl_ig1b_ft_in1k", 1000),
            ("gluon_in1k", 1000),
            ("tv_in1k", 1000),
        ],
    ),
    (
        "resnet34",
        &[
            ("a1_in1k", 1000),
            ("a2_in1k", 1000),
            ("a3_in1k", 1000),
            ("bt_in1k", 1000),
            ("gluon_in1k", 1000),
            ("ra4_e3600_r224_in1k", 1000),
            ("tv_in1k", 1000),
        ],
    ),
    (
        "resnet50",
        &[
            ("a1_in1k", 1000),
            ("a1h_in1k", 1000),
            ("a2_in1k", 1000),
            ("a3_in1k", 1000),
            ("am_in1k", 1000),
            ("b1k_in1k", 1000),
            ("b2k_in1k", 1000),
            ("bamboo", 0),
            ("bt_in1k", 1000),
            ("c1_in1k", 1000),
            ("c2_in1k", 1000),
            ("d_in1k", 1000),
            ("fb_ssl_yfcc100m_ft_in1k", 1000),
            ("fb_swsl_ig1b_ft_in1k", 1000),
            ("gluon_in1k", 1000),
            ("ra_in1k", 1000),
            ("ram_in1k", 1000),
            ("tv2_in1k", 1000),
            ("tv_in1k", 1000),
        ],
    ),
    (
        "resnet101",
        &[
            ("a1_in1k", 1000),
            ("a1h_in1k", 1000),
            ("a2_in1k", 1000),
            ("a3_in1k", 1000),
            ("gluon_in1k", 1000),
            ("tv2_in1k", 1000),
            ("tv_in1k", 1000),
        ],
    ),
    (
        "resnet152",
        &[
            ("a1_in1k", 1000),
            ("a1h_in1k", 1000),
            ("a2_in1k", 1000),
            ("a3_in1k", 1000),
            ("gluon_in1k", 1000),
            ("tv2_in1k", 1000),
            ("tv_in1k", 1000),
        ],
    ),
    (
        "vit_tiny_patch16_224",
        &[("augreg_in21k", 21843), ("augreg_in21k_ft_in1k", 1000)],
    ),
    (
        "vit_small_patch16_224",
        &[
            ("augreg_in1k", 1000),
            ("augreg_in21k", 21843),
            ("augreg_in21k_ft_in1k", 1000),
            ("dino", 0),
        ],
    ),
    (
        "vit_base_patch16_224",
        &[
            ("augreg2_in21k_ft_in1k", 1000),
            ("augreg_in1k", 1000),
            ("augreg_in21k", 21843),
            ("augreg_in21k_ft_in1k", 1000),
            ("bamboo", 115217),
            ("dino", 0),
            ("mae", 0),
            ("orig_in21k", 0),
            ("orig_in21k_ft_in1k", 1000),
            ("sam_in1k", 1000),
        ],
    ),
    (
        "vit_large_patch16_224",
        &[
            ("augreg_in21k", 21843),
            ("augreg_in21k_ft_in1k", 1000),
            ("mae", 0),
            ("orig_in21k", 0),
        ],
    ),
    (
        "swin_tiny_patch4_window7_224",
        &[
            ("ms_in1k", 1000),
            ("ms_in22k", 21841),
            ("ms_in22k_ft_in1k", 1000),
        ],
    ),
    (
        "swin_small_patch4_window7_224",
        &[
            ("ms_in1k", 1000),
            ("ms_in22k", 21841),
            ("ms_in22k_ft_in1k", 1000),
        ],
    ),
    (
        "swin_base_patch4_window7_224",
        &[
            ("ms_in1k", 1000),
            ("ms_in22k", 21841),
            ("ms_in22k_ft_in1k", 1000),
        ],
    ),
    (
        "convnext_tiny",
        &[
            ("dinov3_lvd1689m", 0),
            ("eupe_lvd1689m", 0),
            ("fb_in1k", 1000),
            ("fb_in22k", 21841),
            ("fb_in22k_ft_in1k", 1000),
            ("fb_in22k_ft_in1k_384", 1000),
            ("in12k", 11821),
            ("in12k_ft_in1k", 1000),
            ("in12k_ft_in1k_384", 1000),
        ],
    ),
    (
        "convnext_small",
        &[
            ("dinov3_lvd1689m", 0),
            ("eupe_lvd1689m", 0),
            ("fb_in1k", 1000),
            ("fb_in22k", 21841),
            ("fb_in22k_ft_in1k", 1000),
            ("fb_in22k_ft_in1k_384", 1000),
            ("in12k", 11821),
            ("in12k_ft_in1k", 1000),
            ("in12k_ft_in1k_384", 1000),
        ],
    ),
    (
        "convnext_base",
        &[
            ("clip_laion2b", 640),
            ("clip_laion2b_augreg", 640),
            ("clip_laion2b_augreg_ft_in1k", 1000),
            ("clip_laion2b_augreg_ft_in12k", 11821),
            ("clip_laion2b_augreg_ft_in12k_in1k", 1000),
            ("clip_laion2b_augreg_ft_in12k_in1k_384", 1000),
            ("clip_laiona", 640),
            ("clip_laiona_320", 640),
            ("clip_laiona_augreg_320", 640),
            ("clip_laiona_augreg_ft_in1k_384", 1000),
            ("dinov3_lvd1689m", 0),
            ("eupe_lvd1689m", 0),
            ("fb_in1k", 1000),
            ("fb_in22k", 21841),
            ("fb_in22k_ft_in1k", 1000),
            ("fb_in22k_ft_in1k_384", 1000),
        ],
    ),
    (
        "convnext_large",
        &[
            ("dinov3_lvd1689m", 0),
            ("fb_in1k", 1000),
            ("fb_in22k", 21841),
            ("fb_in22k_ft_in1k", 1000),
            ("fb_in22k_ft_in1k_384", 1000),
        ],
    ),
    (
        "convnext_xlarge",
        &[
            ("fb_in22k", 21841),
            ("fb_in22k_ft_in1k", 1000),
            ("fb_in22k_ft_in1k_384", 1000),
        ],
    ),
];

/// The tags of `arch` (empty when it has none).
pub(crate) fn tags_of(arch: &str) -> &'static [(&'static str, i64)] {
    TAGS.iter()
        .find(|(a, _)| *a == arch)
        .map(|(_, t)| *t)
        .unwrap_or(&[])
}

/// timm's `split_model_name_tag`: `arch.tag` -> (`arch`, `tag`); a name without a dot has
/// the empty tag.
pub(crate) fn split(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or((name, ""))
}

/// The pretrained cfg `num_classes` of `arch.tag`, or why the tag is not one of `arch`'s
/// (timm's "Invalid pretrained tag" error of `get_pretrained_cfg`).
pub(crate) fn tag_num_classes(arch: &str, tag: &str) -> std::result::Result<i64, String> {
    let tags = tags_of(arch);
    match tags.iter().find(|(t, _)| *t == tag) {
        Some((_, n)) => Ok(*n),
        None if tags.is_empty() => Err(format!(
            "`{arch}.{tag}`: timm `{arch}` has no pretrained tags (timm raises \"Invalid pretrained tag ({tag}) \
             for {arch}.\"); use `{arch}`"
        )),
        None => Err(format!(
            "`{arch}.{tag}`: `{tag}` is not a pretrained tag of timm `{arch}` (timm raises \"Invalid pretrained \
             tag ({tag}) for {arch}.\", also with pretrained=False); its tags: {}",
            tags.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The resolver of the timm sources ([`terrahost_plugin_api::sdk::Catalog::resolve_with`]):
/// `arch.tag` is built by the entry `arch` when `tag` is one of its pretrained tags, and
/// refused, naming the valid tags, when it is not. `is_entry` says whether `arch` is an entry
/// of the source (a name whose part before the dot is not is nothing to the resolver).
pub(crate) fn resolve(
    name: &str,
    is_entry: impl Fn(&str) -> bool,
) -> Option<std::result::Result<Alias, String>> {
    let (arch, tag) = name.split_once('.')?;
    if !is_entry(arch) {
        return None;
    }
    Some(tag_num_classes(arch, tag).map(|n| Alias {
        entry: arch.to_owned(),
        note: format!(
            "timm `{arch}` with the pretrained tag `{tag}`: the tag names pretrained weights, not an architecture, \
             so this builds `{arch}` (no weights are downloaded). The tag's pretrained cfg makes num_classes={n} \
             the default of a classifier head (a features-only backbone has none, and TimmModelFactory always \
             passes num_classes); in_chans and img_size keep their defaults."
        ),
    }))
}

/// `catalog` with the resolver of [`resolve`] over its own entries.
pub(crate) fn with_tags(catalog: Catalog) -> Catalog {
    let names: HashSet<String> = catalog
        .entries()
        .iter()
        .map(|e| e.info().name.to_string())
        .collect();
    catalog.resolve_with(move |name| resolve(name, |arch| names.contains(arch)))
}
