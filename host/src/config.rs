//! Model configs: TerraTorch's `model_factory` + `model_args`, plain or inside a
//! LightningCLI config.
//!
//! A LightningCLI config is read the way TerraTorch 1.2.11's task classes read their
//! `init_args` (`terratorch/tasks/*_tasks.py`, `base_task.py`): the task class sets the
//! `task` it passes to `build_model`, `aux_heads` becomes the factory's `aux_decoders`,
//! and every other argument of the class is accepted. Arguments that only matter for
//! training are recorded as unused; any other argument `run` does not use is recorded
//! with a warning; an argument the class does not have is refused, as LightningCLI
//! refuses it. Nothing is dropped silently: every unused key is in
//! [`ModelConfig::unused`].
use crate::error::{HostError, Result};
use serde_json::{Map, Value};
use std::path::Path;
use terrahost_plugin_api::params::did_you_mean;

/// A model to build: a factory from the `model_factory` registry and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The factory's name (`EncoderDecoderFactory`).
    pub model_factory: String,
    /// The keyword arguments of its `build_model`, `task` included (where the task
    /// class passes one) and `aux_decoders` (from the task's `aux_heads`).
    pub model_args: Map<String, Value>,
    /// The LightningCLI task class (its last path segment), if the config is one.
    pub task_class: Option<String>,
    /// Keys of the file that building the model does not use, in file order.
    pub unused: Vec<UnusedKey>,
}

/// A key of the config file that building the model does not read.
#[derive(Debug, Clone, PartialEq)]
pub struct UnusedKey {
    /// Its path in the file, e.g. `model.init_args.loss` or `trainer`.
    pub key: String,
    /// Why it is not used.
    pub why: &'static str,
    /// Whether the user should be told on stderr. False for keys that only matter for
    /// training and for the LightningCLI sections other than `model`.
    pub warn: bool,
}

/// A TerraTorch task class whose model terrahost builds.
struct TaskClass {
    /// The class name (the last segment of `class_path`).
    name: &'static str,
    /// The `task` it passes to `build_model` (`None`: it passes none).
    task: Option<&'static str>,
    /// Every `__init__` argument besides `model_args`, `model_factory`, `model` and
    /// `aux_heads`, which are read here.
    args: &'static [&'static str],
}

/// Task-class arguments that only matter for training (losses, optimisation, freezing,
/// metrics, plotting).
const TRAINING_ONLY: [&str; 30] = [
    "loss",
    "aux_loss",
    "class_weights",
    "ignore_index",
    "custom_loss",
    "custom_loss_kwargs",
    "lr",
    "optimizer",
    "optimizer_hparams",
    "scheduler",
    "scheduler_hparams",
    "freeze_backbone",
    "freeze_decoder",
    "freeze_head",
    "freeze_encoder",
    "plot_on_val",
    "class_names",
    "test_dataloaders_names",
    "lr_overrides",
    "path_to_record_metrics",
    "var_weights",
    "var_names",
    "num_outputs",
    "masked_metric",
    "modalities",
    "tiled_inference_on_testing",
    "tiled_inference_on_validation",
    "boxes_field",
    "labels_field",
    "masks_field",
];

/// Task-class arguments that shape inference on scenes (TerraTorch's `predict`), not the
/// model: `run` feeds the model one tensor and writes its raw output.
const INFERENCE_ONLY: [&str; 5] = [
    "tiled_inference_parameters",
    "output_on_inference",
    "output_most_probable",
    // ObjectDetectionTask's predict_step: apply_nms_batch on the model's detections.
    "iou_threshold",
    "score_threshold",
];

const SEGMENTATION_ARGS: &[&str] = &[
    "loss",
    "aux_loss",
    "class_weights",
    "ignore_index",
    "lr",
    "optimizer",
    "optimizer_hparams",
    "scheduler",
    "scheduler_hparams",
    "freeze_backbone",
    "freeze_decoder",
    "freeze_head",
    "plot_on_val",
    "class_names",
    "tiled_inference_parameters",
    "test_dataloaders_names",
    "lr_overrides",
    "output_on_inference",
    "output_most_probable",
    "path_to_record_metrics",
    "tiled_inference_on_testing",
    "tiled_inference_on_validation",
];

const PIXELWISE_REGRESSION_ARGS: &[&str] = &[
    "loss",
    "aux_loss",
    "var_weights",
    "ignore_index",
    "custom_loss",
    "custom_loss_kwargs",
    "lr",
    "optimizer",
    "optimizer_hparams",
    "scheduler",
    "scheduler_hparams",
    "freeze_backbone",
    "freeze_decoder",
    "freeze_head",
    "plot_on_val",
    "tiled_inference_parameters",
    "test_dataloaders_names",
    "lr_overrides",
    "tiled_inference_on_testing",
    "tiled_inference_on_validation",
    "path_to_record_metrics",
];

const CLASSIFICATION_ARGS: &[&str] = &[
    "loss",
    "aux_loss",
    "class_weights",
    "ignore_index",
    "custom_loss",
    "custom_loss_kwargs",
    "lr",
    "optimizer",
    "optimizer_hparams",
    "scheduler",
    "scheduler_hparams",
    "freeze_backbone",
    "freeze_decoder",
    "freeze_head",
    "plot_on_val",
    "class_names",
    "test_dataloaders_names",
    "lr_overrides",
    "path_to_record_metrics",
];

const SCALAR_REGRESSION_ARGS: &[&str] = &[
    "loss",
    "aux_loss",
    "var_weights",
    "ignore_index",
    "lr",
    "num_outputs",
    "optimizer",
    "optimizer_hparams",
    "scheduler",
    "scheduler_hparams",
    "freeze_backbone",
    "freeze_decoder",
    "plot_on_val",
    "freeze_head",
    "var_names",
    "test_dataloaders_names",
    "lr_overrides",
    "path_to_record_metrics",
];

const RECONSTRUCTION_ARGS: &[&str] = &[
    "loss",
    "ignore_index",
    "masked_metric",
    "lr",
    "optimizer",
    "optimizer_hparams",
    "scheduler",
    "scheduler_hparams",
    "freeze_encoder",
    "freeze_decoder",
    "plot_on_val",
    "tiled_inference_parameters",
    "modalities",
];

/// `ObjectDetectionTask` (TerraTorch 1.2.13): `configure_models` calls
/// `build_model("object_detection", **model_args)`.
const OBJECT_DETECTION_ARGS: &[&str] = &[
    "lr",
    "optimizer",
    "optimizer_hparams",
    "scheduler",
    "scheduler_hparams",
    "freeze_backbone",
    "freeze_decoder",
    "class_names",
    "iou_threshold",
    "score_threshold",
    "boxes_field",
    "labels_field",
    "masks_field",
    "ignore_index",
];

/// The task classes of TerraTorch 1.2.11 whose models `run` builds.
const TASK_CLASSES: [TaskClass; 7] = [
    TaskClass {
        name: "SemanticSegmentationTask",
        task: Some("segmentation"),
        args: SEGMENTATION_ARGS,
    },
    TaskClass {
        name: "PixelwiseRegressionTask",
        task: Some("regression"),
        args: PIXELWISE_REGRESSION_ARGS,
    },
    TaskClass {
        name: "ClassificationTask",
        task: Some("classification"),
        args: CLASSIFICATION_ARGS,
    },
    TaskClass {
        name: "MultiLabelClassificationTask",
        task: Some("classification"),
        args: CLASSIFICATION_ARGS,
    },
    TaskClass {
        name: "ScalarRegressionTask",
        task: Some("scalar_regression"),
        args: SCALAR_REGRESSION_ARGS,
    },
    // `ReconstructionTask.configure_models` calls `build_model(**model_args)`: no task,
    // no auxiliary heads.
    TaskClass {
        name: "ReconstructionTask",
        task: None,
        args: RECONSTRUCTION_ARGS,
    },
    TaskClass {
        name: "ObjectDetectionTask",
        task: Some("object_detection"),
        args: OBJECT_DETECTION_ARGS,
    },
];

/// Task classes of TerraTorch that terrahost does not build, with the reason.
fn unsupported_task(class: &str) -> Option<&'static str> {
    Some(match class {
        "WxCTask" | "WxCDownscalingTask" => {
            "the WxC / granite weather models are not supported by terrahost yet"
        }
        "ECCCTask" => "the ECCC downscaling models are not supported by terrahost yet",
        "EmbeddingGenerationTask" => {
            "EmbeddingGenerationTask is not supported by `run` yet; build the backbone's features with \
             `model_factory: EncoderDecoderFactory` and `task: embedding_generation` instead"
        }
        // TerraTorch 1.2.13's embedding tasks: `configure_models` raises a TypeError unless
        // the decoder is a SklearnDecoder, whose prediction is a fitted scikit-learn
        // estimator loaded from a joblib pickle; so no configuration of them is inference
        // on a network terrahost has.
        "EmbeddingDecodingTask" | "EmbeddingClassificationTask" => {
            "TerraTorch 1.2.13's embedding tasks predict with a `SklearnDecoder` (TerraTorch refuses any other \
             decoder for them): a scikit-learn estimator fitted during training and loaded from the joblib \
             pickle the checkpoint names, which terrahost does not run; for the backbone's embeddings use \
             `model_factory: EncoderDecoderFactory` with `task: embedding_generation`"
        }
        "InferenceTask" => "InferenceTask is not supported by terrahost yet",
        _ => return None,
    })
}

fn config_error(msg: impl Into<String>) -> HostError {
    HostError::Config(msg.into())
}

impl ModelConfig {
    /// Reads a YAML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::limits::read_text(path, "config").map_err(HostError::Config)?;
        Self::from_yaml(&text).map_err(|e| match e {
            HostError::Config(m) => HostError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses YAML: either top-level `model_factory` and `model_args` (what
    /// `build_model` takes), or a LightningCLI config whose `model` section is a
    /// TerraTorch task class with `init_args`.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let doc: Value =
            crate::yaml::parse(text).map_err(|e| config_error(format!("not valid YAML: {e}")))?;
        let Value::Object(top) = doc else {
            return Err(config_error("expected a mapping at the top level"));
        };
        if top.contains_key("model_factory") || top.contains_key("model_args") {
            return Self::plain(top);
        }
        match top.get("model") {
            Some(Value::Object(model)) => Self::lightning(&top, model),
            Some(other) => Err(config_error(format!(
                "`model` must be a mapping with `class_path` and `init_args`, got {other}"
            ))),
            None => Err(config_error(
                "expected `model_factory` and `model_args` at the top level, or a LightningCLI config with \
                 `model.class_path` and `model.init_args`",
            )),
        }
    }

    /// The plain form: `build_model`'s arguments as they are.
    fn plain(top: Map<String, Value>) -> Result<Self> {
        let model_factory = match top.get("model_factory") {
            Some(Value::String(s)) => s.clone(),
            None => "EncoderDecoderFactory".to_owned(),
            Some(other) => {
                return Err(config_error(format!(
                    "`model_factory` must be a string, got {other}"
                )))
            }
        };
        let model_args = model_args_of(&top, "model_args")?;
        let unused = top
            .keys()
            .filter(|k| !["model_factory", "model_args"].contains(&k.as_str()))
            .map(|k| UnusedKey {
                key: k.clone(),
                why: "a plain config is `model_factory` + `model_args`; other keys are not read",
                warn: true,
            })
            .collect();
        Ok(Self {
            model_factory,
            model_args,
            task_class: None,
            unused,
        })
    }

    /// The LightningCLI form.
    fn lightning(top: &Map<String, Value>, model: &Map<String, Value>) -> Result<Self> {
        let mut unused: Vec<UnusedKey> = top
            .keys()
            .filter(|k| k.as_str() != "model")
            .map(|k| UnusedKey {
                key: k.clone(),
                why: "LightningCLI section that does not describe the model",
                warn: false,
            })
            .collect();
        let class_path = match model.get("class_path") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(config_error(format!(
                    "`model.class_path` must be a string, got {other}"
                )))
            }
            None => {
                return Err(config_error(
                    "`model.class_path` is missing; it names the TerraTorch task, e.g. \
                     terratorch.tasks.SemanticSegmentationTask",
                ))
            }
        };
        let class_name = class_path.rsplit('.').next().unwrap_or(class_path);
        if let Some(why) = unsupported_task(class_name) {
            return Err(config_error(format!(
                "`model.class_path` is `{class_path}`: {why}"
            )));
        }
        let Some(class) = TASK_CLASSES.iter().find(|c| c.name == class_name) else {
            let known: Vec<&str> = TASK_CLASSES.iter().map(|c| c.name).collect();
            let hint = did_you_mean(class_name, known.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(config_error(format!(
                "`model.class_path` is `{class_path}`, which is not a TerraTorch task terrahost builds{hint}; \
                 known: {}",
                known.join(", ")
            )));
        };
        for key in model.keys() {
            if !["class_path", "init_args"].contains(&key.as_str()) {
                unused.push(UnusedKey {
                    key: format!("model.{key}"),
                    why: "not read: a LightningCLI model section is `class_path` + `init_args`",
                    warn: true,
                });
            }
        }
        let init = match model.get("init_args") {
            Some(Value::Object(init)) => init,
            None => return Err(config_error("`model` has no `init_args` mapping")),
            Some(other) => {
                return Err(config_error(format!(
                    "`model.init_args` must be a mapping, got {other}"
                )))
            }
        };

        if init.get("model").is_some_and(|v| !v.is_null()) {
            return Err(config_error(format!(
                "`model.init_args.model` gives {class_name} a custom torch.nn.Module, which terrahost cannot \
                 build; describe the model with `model_factory` and `model_args` instead"
            )));
        }
        let model_factory = match init.get("model_factory") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => {
                // TerraTorch 1.2.11 raises here ("A model_factory or a model
                // (torch.nn.Module) must be provided."); terrahost takes the factory
                // nearly every config names, and says so.
                tracing::warn!(
                    "`model.init_args.model_factory` is not set (TerraTorch itself refuses this); \
                     using EncoderDecoderFactory"
                );
                "EncoderDecoderFactory".to_owned()
            }
            Some(other) => {
                return Err(config_error(format!(
                    "`model.init_args.model_factory` must be a string, got {other}"
                )))
            }
        };
        let mut model_args = model_args_of(init, "model_args")?;

        if let Some(task) = class.task {
            if let Some(given) = model_args.get("task") {
                // TerraTorch passes the task positionally, so a second one is Python's
                // TypeError.
                return Err(config_error(format!(
                    "`model.init_args.model_args.task` is {given}, but {class_name} sets the task itself \
                     (`{task}`); TerraTorch fails with \"build_model() got multiple values for argument \
                     'task'\". Remove `task` from model_args"
                )));
            }
            model_args.insert("task".to_owned(), Value::String(task.to_owned()));
        }

        match init.get("aux_heads") {
            None | Some(Value::Null) => {}
            Some(_) if class.task.is_none() => {
                return Err(config_error(format!(
                    "`model.init_args.aux_heads`: {class_name} has no auxiliary heads"
                )))
            }
            Some(Value::Array(heads)) => {
                if model_args.contains_key("aux_decoders") {
                    return Err(config_error(
                        "both `model.init_args.aux_heads` and `model_args.aux_decoders` are given; TerraTorch \
                         fails with \"build_model() got multiple values for keyword argument 'aux_decoders'\". \
                         Keep `aux_heads`",
                    ));
                }
                model_args.insert("aux_decoders".to_owned(), Value::Array(heads.clone()));
            }
            Some(other) => {
                return Err(config_error(format!(
                    "`model.init_args.aux_heads` must be a list of {{name, decoder, decoder_args}}, got {other}"
                )))
            }
        }

        for key in init.keys() {
            if ["model_args", "model_factory", "model", "aux_heads"].contains(&key.as_str()) {
                continue;
            }
            let path = format!("model.init_args.{key}");
            if !class.args.contains(&key.as_str()) {
                let hint = did_you_mean(key, class.args.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(config_error(format!(
                    "`{path}`: {class_name} has no argument `{key}`{hint}, so LightningCLI refuses this config"
                )));
            }
            unused.push(if TRAINING_ONLY.contains(&key.as_str()) {
                UnusedKey {
                    key: path,
                    why: "only used in training",
                    warn: false,
                }
            } else if INFERENCE_ONLY.contains(&key.as_str()) {
                UnusedKey {
                    key: path,
                    why: "shapes inference on whole scenes (TerraTorch's predict); `run` writes the model's raw output",
                    warn: true,
                }
            } else {
                UnusedKey {
                    key: path,
                    why: "not used by terrahost",
                    warn: true,
                }
            });
        }
        Ok(Self {
            model_factory,
            model_args,
            task_class: Some(class_name.to_owned()),
            unused,
        })
    }

    /// Switches pretrained loading off, for a build whose every weight a full checkpoint
    /// then replaces (`run --weights`, which loads strictly: a key it lacks is an
    /// error). Loading pretrained weights first would only need files, or a hub, that the
    /// checkpoint makes pointless. Returns the keys it set to `false`: `pretrained`,
    /// `backbone_pretrained` and `backbone_kwargs.pretrained` where true, and
    /// `pretrained` for the factories whose default is true (PrithviModelFactory,
    /// ClayModelFactory, Clay1_5ModelFactory, SMPModelFactory, TimmModelFactory).
    pub fn switch_off_pretrained(&mut self) -> Vec<String> {
        let mut changed = Vec::new();
        let is_on = |v: &Value| !matches!(v, Value::Null | Value::Bool(false));
        for key in ["pretrained", "backbone_pretrained"] {
            if self.model_args.get(key).is_some_and(is_on) {
                self.model_args.insert(key.to_owned(), Value::Bool(false));
                changed.push(key.to_owned());
            }
        }
        if let Some(Value::Object(kw)) = self.model_args.get_mut("backbone_kwargs") {
            if kw.get("pretrained").is_some_and(is_on) {
                kw.insert("pretrained".to_owned(), Value::Bool(false));
                changed.push("backbone_kwargs.pretrained".to_owned());
            }
        }
        let defaults_on = [
            "PrithviModelFactory",
            "ClayModelFactory",
            "Clay1_5ModelFactory",
            "SMPModelFactory",
            "TimmModelFactory",
        ];
        if defaults_on.contains(&self.model_factory.as_str())
            && !self.model_args.contains_key("pretrained")
        {
            self.model_args
                .insert("pretrained".to_owned(), Value::Bool(false));
            changed.push("pretrained".to_owned());
        }
        changed
    }

    /// Tells the user about the keys that were not used: one warning per key that
    /// matters, one debug line for the training-only ones.
    pub fn report_unused(&self) {
        for u in &self.unused {
            if u.warn {
                tracing::warn!("config key `{}` is not used: {}", u.key, u.why);
            } else {
                tracing::debug!("config key `{}` is not used: {}", u.key, u.why);
            }
        }
    }
}

fn model_args_of(section: &Map<String, Value>, key: &str) -> Result<Map<String, Value>> {
    match section.get(key) {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => Err(config_error(format!(
            "`{key}` must be a mapping, got {other}"
        ))),
        None => Err(config_error(format!("`{key}` is missing"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lightning(init: &str) -> Result<ModelConfig> {
        ModelConfig::from_yaml(&format!(
            "trainer:\n  max_epochs: 1\nmodel:\n  class_path: terratorch.tasks.SemanticSegmentationTask\n  init_args:\n{init}"
        ))
    }

    #[test]
    fn plain_form() {
        let c = ModelConfig::from_yaml(
            "model_factory: EncoderDecoderFactory\nmodel_args:\n  task: segmentation\n  backbone: timm_resnet18\n  necks:\n    - name: SelectIndices\n      indices: [1, 2]\n",
        )
        .unwrap();
        assert_eq!(c.model_factory, "EncoderDecoderFactory");
        assert_eq!(c.model_args["backbone"], "timm_resnet18");
        assert_eq!(c.model_args["necks"][0]["indices"][1], 2);
        assert!(c.unused.is_empty());
    }

    #[test]
    fn lightning_form_takes_the_task_from_the_class() {
        let c = lightning(
            "    model_factory: EncoderDecoderFactory\n    model_args:\n      backbone: timm_resnet18\n",
        )
        .unwrap();
        assert_eq!(c.model_args["task"], "segmentation");
        assert_eq!(c.task_class.as_deref(), Some("SemanticSegmentationTask"));
        // The trainer section is recorded, quietly.
        assert_eq!(c.unused.len(), 1);
        assert_eq!(c.unused[0].key, "trainer");
        assert!(!c.unused[0].warn);
    }

    #[test]
    fn aux_heads_become_the_factorys_aux_decoders() {
        let c = lightning(
            "    model_factory: EncoderDecoderFactory\n    model_args:\n      backbone: timm_resnet18\n    aux_heads:\n      - name: aux_head\n        decoder: IdentityDecoder\n        decoder_args:\n          head_dropout: 0.1\n    aux_loss:\n      aux_head: 1.0\n",
        )
        .unwrap();
        assert_eq!(c.model_args["aux_decoders"][0]["name"], "aux_head");
        assert_eq!(
            c.model_args["aux_decoders"][0]["decoder"],
            "IdentityDecoder"
        );
        let aux_loss = c
            .unused
            .iter()
            .find(|u| u.key == "model.init_args.aux_loss")
            .unwrap();
        assert!(!aux_loss.warn);
        let e = lightning(
            "    model_factory: EncoderDecoderFactory\n    model_args:\n      aux_decoders: []\n    aux_heads: []\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("multiple values for keyword argument 'aux_decoders'"),
            "{e}"
        );
    }

    #[test]
    fn training_keys_are_quiet_inference_keys_warn_unknown_keys_are_refused() {
        let c = lightning(
            "    model_factory: EncoderDecoderFactory\n    model_args: {backbone: timm_resnet18}\n    loss: ce\n    freeze_backbone: false\n    ignore_index: -1\n    tiled_inference_parameters: {h_crop: 224}\n",
        )
        .unwrap();
        let by_key = |k: &str| c.unused.iter().find(|u| u.key == k).unwrap().warn;
        assert!(!by_key("model.init_args.loss"));
        assert!(!by_key("model.init_args.freeze_backbone"));
        assert!(!by_key("model.init_args.ignore_index"));
        assert!(by_key("model.init_args.tiled_inference_parameters"));

        let e = lightning("    model_factory: EncoderDecoderFactory\n    model_args: {}\n    freeze_backbon: true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no argument `freeze_backbon`"), "{e}");
        assert!(e.contains("did you mean `freeze_backbone`"), "{e}");
        // Keys of one class are not keys of another: class_weights is not a regression argument.
        let e = ModelConfig::from_yaml(
            "model:\n  class_path: terratorch.tasks.PixelwiseRegressionTask\n  init_args:\n    model_factory: EncoderDecoderFactory\n    model_args: {}\n    class_weights: [1, 2]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("PixelwiseRegressionTask has no argument `class_weights`"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_factory_means_encoder_decoder_factory() {
        let c = lightning("    model_args: {backbone: timm_resnet18}\n").unwrap();
        assert_eq!(c.model_factory, "EncoderDecoderFactory");
    }

    #[test]
    fn a_task_in_model_args_is_terratorchs_type_error() {
        let e = lightning(
            "    model_factory: EncoderDecoderFactory\n    model_args: {task: segmentation}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("multiple values for argument 'task'"), "{e}");
    }

    #[test]
    fn reconstruction_passes_no_task() {
        let c = ModelConfig::from_yaml(
            "model:\n  class_path: terratorch.tasks.ReconstructionTask\n  init_args:\n    model_factory: FullModelFactory\n    model_args: {model: prithvi_eo_v1_100_mae}\n    freeze_encoder: false\n",
        )
        .unwrap();
        assert!(!c.model_args.contains_key("task"));
        assert_eq!(c.model_factory, "FullModelFactory");
    }

    /// ObjectDetectionTask passes `task="object_detection"` positionally; its NMS thresholds
    /// only shape TerraTorch's predict step.
    #[test]
    fn object_detection_task_builds_with_its_task() {
        let c = ModelConfig::from_yaml(
            "model:\n  class_path: terratorch.tasks.ObjectDetectionTask\n  init_args:\n    model_factory: ObjectDetectionModelFactory\n    model_args: {framework: faster-rcnn}\n    score_threshold: 0.3\n    boxes_field: bbox\n",
        )
        .unwrap();
        assert_eq!(c.model_args["task"], "object_detection");
        assert_eq!(c.model_factory, "ObjectDetectionModelFactory");
        let score = c
            .unused
            .iter()
            .find(|u| u.key == "model.init_args.score_threshold")
            .unwrap();
        assert!(score.warn && score.why.contains("predict"), "{score:?}");
        let field = c
            .unused
            .iter()
            .find(|u| u.key == "model.init_args.boxes_field")
            .unwrap();
        assert!(!field.warn, "{field:?}");
    }

    #[test]
    fn unsupported_and_unknown_tasks_are_named() {
        let e = ModelConfig::from_yaml(
            "model:\n  class_path: my.pkg.SemanticSegmentationTsk\n  init_args: {model_args: {}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("did you mean `SemanticSegmentationTask`"), "{e}");
        let e = lightning("    model: {class_path: torch.nn.Identity}\n    model_args: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("custom torch.nn.Module"), "{e}");
    }

    /// TerraTorch 1.2.13's embedding tasks need a fitted scikit-learn estimator
    /// (SklearnDecoder): refused with that reason, whatever the model_args say.
    #[test]
    fn the_embedding_tasks_of_terratorch_1_2_13_are_refused_with_the_reason() {
        for class in ["EmbeddingDecodingTask", "EmbeddingClassificationTask"] {
            let e = ModelConfig::from_yaml(&format!(
                "model:\n  class_path: terratorch.tasks.{class}\n  init_args:\n    model_factory: EncoderDecoderFactory\n    model_args: {{backbone: prithvi_eo_tiny, decoder: SklearnDecoder, num_classes: 3}}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(class) && e.contains("SklearnDecoder") && e.contains("scikit-learn"),
                "{e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_full_checkpoint_switches_pretrained_loading_off() {
        let mut c = lightning(
            "    model_factory: EncoderDecoderFactory\n    model_args:\n      backbone: prithvi_eo_v2_300\n      backbone_pretrained: true\n",
        )
        .unwrap();
        assert_eq!(c.switch_off_pretrained(), vec!["backbone_pretrained"]);
        assert_eq!(c.model_args["backbone_pretrained"], false);
        assert!(c.switch_off_pretrained().is_empty());
        let mut c = ModelConfig::from_yaml(
            "model_factory: PrithviModelFactory\nmodel_args: {backbone: prithvi_eo_v1_100}\n",
        )
        .unwrap();
        assert_eq!(c.switch_off_pretrained(), vec!["pretrained"]);
        assert_eq!(c.model_args["pretrained"], false);
    }

    #[test]
    fn missing_model_args_is_explained() {
        let e = ModelConfig::from_yaml("model_factory: EncoderDecoderFactory\n").unwrap_err();
        assert!(e.to_string().contains("`model_args` is missing"), "{e}");
        assert!(ModelConfig::from_yaml("- a\n- b\n").is_err());
    }
}
