//! Model configs: TerraTorch's `model_factory` + `model_args`, plain or inside a
//! LightningCLI config.
use crate::error::{HostError, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// A model to build: a factory from the `model_factory` registry and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The factory's name (`EncoderDecoderFactory`).
    pub model_factory: String,
    /// The keyword arguments of its `build_model`, `task` included.
    pub model_args: Map<String, Value>,
}

/// The task a TerraTorch Lightning task class builds its model for.
fn task_of_class(class_path: &str) -> Option<&'static str> {
    let class = class_path.rsplit('.').next().unwrap_or(class_path);
    Some(match class {
        "SemanticSegmentationTask" => "segmentation",
        "PixelwiseRegressionTask" => "regression",
        "ClassificationTask" | "MultiLabelClassificationTask" => "classification",
        _ => return None,
    })
}

impl ModelConfig {
    /// Reads a YAML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| HostError::io(path, e))?;
        Self::from_yaml(&text).map_err(|e| match e {
            HostError::Config(m) => HostError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses YAML: either top-level `model_factory` and `model_args`, or a LightningCLI
    /// config with `model.init_args.model_factory` / `model_args` (the task then comes
    /// from `model.class_path` unless `model_args.task` is set).
    pub fn from_yaml(text: &str) -> Result<Self> {
        let doc: Value = serde_yaml::from_str(text)
            .map_err(|e| HostError::Config(format!("not valid YAML: {e}")))?;
        let Value::Object(top) = doc else {
            return Err(HostError::Config(
                "expected a mapping at the top level".into(),
            ));
        };
        let (section, task) = if top.contains_key("model_factory") || top.contains_key("model_args")
        {
            (top, None)
        } else if let Some(Value::Object(model)) = top.get("model") {
            let task = model
                .get("class_path")
                .and_then(Value::as_str)
                .and_then(task_of_class);
            match model.get("init_args") {
                Some(Value::Object(init)) => (init.clone(), task),
                _ => {
                    return Err(HostError::Config(
                        "`model` has no `init_args` mapping".into(),
                    ))
                }
            }
        } else {
            return Err(HostError::Config(
                "expected `model_factory` and `model_args` at the top level, or a LightningCLI config with `model.init_args`".into(),
            ));
        };
        let model_factory = match section.get("model_factory") {
            Some(Value::String(s)) => s.clone(),
            None => "EncoderDecoderFactory".to_owned(),
            Some(other) => {
                return Err(HostError::Config(format!(
                    "`model_factory` must be a string, got {other}"
                )))
            }
        };
        let mut model_args = match section.get("model_args") {
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(HostError::Config(format!(
                    "`model_args` must be a mapping, got {other}"
                )))
            }
            None => return Err(HostError::Config("`model_args` is missing".into())),
        };
        if let Some(task) = task {
            model_args
                .entry("task")
                .or_insert_with(|| Value::String(task.to_owned()));
        }
        Ok(Self {
            model_factory,
            model_args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_form() {
        let c = ModelConfig::from_yaml(
            "model_factory: EncoderDecoderFactory\nmodel_args:\n  task: segmentation\n  backbone: timm_resnet18\n  necks:\n    - name: SelectIndices\n      indices: [1, 2]\n",
        )
        .unwrap();
        assert_eq!(c.model_factory, "EncoderDecoderFactory");
        assert_eq!(c.model_args["backbone"], "timm_resnet18");
        assert_eq!(c.model_args["necks"][0]["indices"][1], 2);
    }

    #[test]
    fn lightning_form_takes_the_task_from_the_class() {
        let c = ModelConfig::from_yaml(
            "model:\n  class_path: terratorch.tasks.SemanticSegmentationTask\n  init_args:\n    model_factory: EncoderDecoderFactory\n    model_args:\n      backbone: timm_resnet18\n",
        )
        .unwrap();
        assert_eq!(c.model_args["task"], "segmentation");
    }

    #[test]
    fn missing_model_args_is_explained() {
        let e = ModelConfig::from_yaml("model_factory: EncoderDecoderFactory\n").unwrap_err();
        assert!(e.to_string().contains("`model_args` is missing"), "{e}");
        assert!(ModelConfig::from_yaml("- a\n- b\n").is_err());
    }
}
