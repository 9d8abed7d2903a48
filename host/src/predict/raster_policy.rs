//! What GDAL may open for `predict`: by default the local raster file the user named,
//! and nothing it could be made to reach from there.
//!
//! GDAL can read far more than local files: `/vsicurl/` and the other virtual file
//! systems, URLs, drivers that fetch tiles over HTTP (WMS, WMTS, ...), and VRT files
//! whose sources are any of those or any file on the machine (a VRT raw band over
//! `/etc/passwd` "predicts" its bytes). A scene from a stranger is therefore checked
//! before GDAL opens it, and what GDAL opened is checked again:
//! - the path is a local regular file, not a `/vsi…` path or a URL;
//! - a VRT (by its content, whatever its name) may only reference files in the scene's
//!   own directory or below, and no virtual file system;
//! - after opening, every file GDAL says the dataset uses (`GDALGetFileList`) lies in
//!   the scene's directory;
//! - GDAL's network drivers are deregistered and its HTTP client pointed at a closed
//!   local port, so nothing GDAL does reaches the network.
//!
//! `--allow-remote-rasters` (or `TERRAHOST_ALLOW_REMOTE_RASTERS=1`) lifts all of this;
//! GDAL's own network settings (`GDAL_HTTP_*`, proxies) then apply as usual.
use std::path::{Path, PathBuf};

/// The environment variable that lifts the policy (`1`, `true`, `yes`).
pub const ALLOW_REMOTE_VAR: &str = "TERRAHOST_ALLOW_REMOTE_RASTERS";

/// The drivers that fetch data over the network by themselves.
const NETWORK_DRIVERS: [&str; 14] = [
    "WMS", "WMTS", "WCS", "HTTP", "DAAS", "EEDA", "EEDAI", "PLMosaic", "OGCAPI", "STACIT",
    "STACTA", "NGW", "ESRIC", "TiledWMS",
];

/// Whether remote and out-of-directory rasters are allowed.
pub fn remote_allowed() -> bool {
    std::env::var(ALLOW_REMOTE_VAR).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Deregisters GDAL's network drivers and points its HTTP client at a closed port
/// (once per process), unless remote rasters are allowed. Call after GDAL has
/// registered its drivers and before the first open of a scene.
pub fn lock_down_gdal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if remote_allowed() {
            return;
        }
        // SAFETY: GDAL's driver manager calls; names are NUL-terminated.
        unsafe { gdal_sys::GDALAllRegister() };
        for name in NETWORK_DRIVERS {
            let c = std::ffi::CString::new(name).expect("no NUL");
            unsafe {
                let d = gdal_sys::GDALGetDriverByName(c.as_ptr());
                if !d.is_null() {
                    gdal_sys::GDALDeregisterDriver(d);
                }
            }
        }
        // Port 9 (discard) on the loopback: a request fails at once instead of leaving.
        let _ = gdal::config::set_config_option("GDAL_HTTP_PROXY", "127.0.0.1:9");
        let _ = gdal::config::set_config_option("GDAL_HTTP_MAX_RETRY", "0");
        let _ =
            gdal::config::set_config_option("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", ".terrahost-none");
    });
}

/// Checks `path` before GDAL opens it. `Err` is the reason, without the path.
pub fn check_before_open(path: &Path) -> Result<(), String> {
    if remote_allowed() {
        return Ok(());
    }
    let text = path.to_string_lossy();
    if text.starts_with("/vsi") || text.contains("://") {
        return Err(format!(
            "a remote or virtual path ({}); predict reads local files unless --allow-remote-rasters is given",
            text.split('/').take(2).collect::<Vec<_>>().join("/")
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read ({e})"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let dir = scene_dir(path)?;
    if let Some(sources) = vrt_sources(path)? {
        for s in sources {
            check_reference(&s, &dir)?;
        }
    }
    Ok(())
}

/// Checks, after opening, every file GDAL says the dataset `ds` uses.
pub fn check_after_open(path: &Path, ds: &gdal::Dataset) -> Result<(), String> {
    if remote_allowed() {
        return Ok(());
    }
    let dir = scene_dir(path)?;
    // SAFETY: GDALGetFileList returns a NULL-terminated list we free with CSLDestroy.
    let files = unsafe {
        let list = gdal_sys::GDALGetFileList(ds.c_dataset());
        let mut out = Vec::new();
        if !list.is_null() {
            let mut i = 0;
            loop {
                let p = *list.add(i);
                if p.is_null() {
                    break;
                }
                out.push(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned());
                i += 1;
            }
            gdal_sys::CSLDestroy(list);
        }
        out
    };
    for f in files {
        check_reference(&f, &dir)?;
    }
    Ok(())
}

/// The directory that holds the scene, canonical.
fn scene_dir(path: &Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("cannot be read ({e})"))?;
    Ok(canonical
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/")))
}

/// A file the scene refers to must be local and lie in `dir` (or below).
fn check_reference(reference: &str, dir: &Path) -> Result<(), String> {
    if reference.starts_with("/vsi") || reference.contains("://") {
        return Err(
            "it refers to a remote or virtual source; predict reads local files unless --allow-remote-rasters is given"
                .to_owned(),
        );
    }
    let p = Path::new(reference);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    };
    // A source that does not exist is GDAL's error to report; one that does must be here.
    let resolved = std::fs::canonicalize(&p).unwrap_or(p);
    if !resolved.starts_with(dir) {
        return Err(format!(
            "it refers to {}, outside the scene's directory {}; predict reads only files beside the scene unless --allow-remote-rasters is given",
            resolved.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// The sources a VRT file names (`SourceFilename` elements, `relativeToVRT` resolved
/// against its directory), or `None` when the file is not a VRT. Judged by content:
/// GDAL recognises a VRT by its first bytes, not its name.
fn vrt_sources(path: &Path) -> Result<Option<Vec<String>>, String> {
    use std::io::Read;
    let mut head = [0u8; 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("cannot be read ({e})"))?;
    let start = String::from_utf8_lossy(&head[..n]);
    if !start.trim_start().starts_with("<VRTDataset") {
        return Ok(None);
    }
    let text = crate::limits::read_text(path, "VRT").map_err(|e| e.to_string())?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("<SourceFilename") {
        rest = &rest[i..];
        let Some(close) = rest.find('>') else { break };
        let attrs = &rest[..close];
        let Some(end) = rest.find("</SourceFilename>") else {
            break;
        };
        let name = rest[close + 1..end].trim();
        let relative = attrs.contains("relativeToVRT=\"1\"") || attrs.contains("relativeToVRT='1'");
        out.push(if relative && !name.starts_with("/vsi") {
            dir.join(name).to_string_lossy().into_owned()
        } else {
            name.to_owned()
        });
        rest = &rest[end..];
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vrt(dir: &Path, name: &str, source: &str, relative: bool) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "<VRTDataset rasterXSize=\"4\" rasterYSize=\"4\"><VRTRasterBand dataType=\"Byte\" band=\"1\"><SimpleSource><SourceFilename relativeToVRT=\"{}\">{source}</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>",
                u8::from(relative)
            ),
        )
        .unwrap();
        p
    }

    #[test]
    fn remote_paths_and_vrts_reaching_outside_are_refused() {
        std::env::remove_var(ALLOW_REMOTE_VAR);
        let dir = tempfile::tempdir().unwrap();
        let e = check_before_open(Path::new("/vsicurl/http://127.0.0.1/x.tif")).unwrap_err();
        assert!(e.contains("remote or virtual"), "{e}");
        let e = check_before_open(Path::new("https://example.com/x.tif")).unwrap_err();
        assert!(e.contains("remote or virtual"), "{e}");
        let p = vrt(
            dir.path(),
            "a.vrt",
            "/vsicurl/http://127.0.0.1:1/x.tif",
            false,
        );
        assert!(check_before_open(&p).unwrap_err().contains("remote"));
        let p = vrt(dir.path(), "b.vrt", "/etc/passwd", false);
        let e = check_before_open(&p).unwrap_err();
        assert!(e.contains("/etc/passwd") && e.contains("outside"), "{e}");
        let p = vrt(dir.path(), "c.tif", "../../../etc/passwd", true);
        assert!(check_before_open(&p).unwrap_err().contains("outside"));
        std::fs::write(dir.path().join("band.tif"), b"x").unwrap();
        let p = vrt(dir.path(), "d.vrt", "band.tif", true);
        assert!(check_before_open(&p).is_ok());
    }
}
