//! How a model's outputs are named where they are written (`terrahost run`'s output file,
//! `predict`'s detection reader, the benchmark worker). A model whose outputs repeat per image
//! (TerraTorch's object-detection models: `boxes`, `scores`, `labels`, `masks`) says so in its
//! `output_names_per_image` meta, and image `i`'s outputs are `boxes.{i}`, `scores.{i}`, ...
use serde_json::{Map, Value};

/// The `output_names_per_image` meta: the names of one image's outputs, in order (empty for a
/// model without it).
pub fn per_image(meta: &Map<String, Value>) -> Vec<String> {
    meta.get("output_names_per_image")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The names of `n` outputs of a model with `output_names_per_image` (`boxes.0`, `scores.0`,
/// ..., `boxes.1`, ...), or `None` when the model has none or `n` is not a whole number of
/// images.
pub fn repeated_per_image(meta: &Map<String, Value>, n: usize) -> Option<Vec<String>> {
    let names = per_image(meta);
    if names.is_empty() || !n.is_multiple_of(names.len()) {
        return None;
    }
    Some(
        (0..n)
            .map(|j| format!("{}.{}", names[j % names.len()], j / names.len()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_repeat_image_by_image() {
        let meta = json!({"output_names_per_image": ["boxes", "scores", "labels"]});
        let meta = meta.as_object().unwrap();
        assert_eq!(per_image(meta), ["boxes", "scores", "labels"]);
        assert_eq!(
            repeated_per_image(meta, 6).unwrap(),
            ["boxes.0", "scores.0", "labels.0", "boxes.1", "scores.1", "labels.1"]
        );
        assert_eq!(repeated_per_image(meta, 0).unwrap(), Vec::<String>::new());
        assert!(repeated_per_image(meta, 4).is_none());
        assert!(repeated_per_image(&Map::new(), 3).is_none());
        assert!(per_image(&Map::new()).is_empty());
    }
}
