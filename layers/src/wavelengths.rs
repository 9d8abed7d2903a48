//! The central wavelengths TerraTorch assigns to band names (`waves_list` of
//! `terratorch/models/backbones/dofa_vit.py`): DOFA and Clay condition their patch
//! embeddings on them.

/// TerraTorch's `waves_list`: band name -> central wavelength (µm).
pub const WAVES_LIST: [(&str, f64); 22] = [
    ("COASTAL_AEROSOL", 0.44),
    ("BLUE", 0.49),
    ("GREEN", 0.56),
    ("RED", 0.665),
    ("RED_EDGE_1", 0.705),
    ("RED_EDGE_2", 0.74),
    ("RED_EDGE_3", 0.783),
    ("NIR_BROAD", 0.832),
    ("NIR_NARROW", 0.864),
    ("WATER_VAPOR", 0.945),
    ("CIRRUS", 1.373),
    ("SWIR_1", 1.61),
    ("SWIR_2", 2.20),
    ("THERMAL_INFRARED_1", 10.90),
    ("THERMAL_INFRARED_12", 12.00),
    ("VV", 5.405),
    ("VH", 5.405),
    ("ASC_VV", 5.405),
    ("ASC_VH", 5.405),
    ("DSC_VV", 5.405),
    ("DSC_VH", 5.405),
    ("VV-VH", 5.405),
];
