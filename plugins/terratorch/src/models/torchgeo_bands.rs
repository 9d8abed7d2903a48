//! The band lists of torchgeo's pretrained weights (`weights.meta["bands"]`), by sensor,
//! which the SSL4EO ResNets ([`super::torchgeo_resnet`]) and ViTs ([`super::torchgeo_vit`])
//! share: `model_bands` are matched against them when a checkpoint's first layer is cut to
//! the input's bands.

/// Landsat 4/5 TM, top of atmosphere.
pub(crate) const LANDSAT_TM_TOA: &[&str] = &["B1", "B2", "B3", "B4", "B5", "B6", "B7"];
/// Landsat 7 ETM+, top of atmosphere.
pub(crate) const LANDSAT_ETM_TOA: &[&str] = &[
    "B1",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6_VCID_1",
    "B6_VCID_2",
    "B7",
    "B8",
];
/// Landsat 7 ETM+, surface reflectance.
pub(crate) const LANDSAT_ETM_SR: &[&str] = &["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"];
/// Landsat 8/9 OLI-TIRS, top of atmosphere.
pub(crate) const LANDSAT_OLI_TIRS_TOA: &[&str] = &[
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11",
];
/// Landsat 8/9 OLI, surface reflectance.
pub(crate) const LANDSAT_OLI_SR: &[&str] = &[
    "SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7",
];
/// Sentinel-2, all 13 bands (torchgeo's names).
pub(crate) const S2_ALL: &[&str] = &[
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8a", "B9", "B10", "B11", "B12",
];
