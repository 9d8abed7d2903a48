//! The same plugins linked into the process (no dlopen): one host serves both, and a
//! model composed across plugins gives the same numbers either way.
use terrahost_integration_tests::in_process_host;
use terrahost_testkit::{compare_outputs, Fixture};

#[test]
fn the_cross_plugin_fixture_model_matches_in_process_too() {
    let host = in_process_host();
    assert_eq!(host.plugins().len(), 4);
    assert!(host.plugins().iter().all(|p| p.path.is_none()));
    let fx = Fixture::load("factory_segmentation");
    let cfg = terrahost::config::ModelConfig::from_file(&fx.dir.join("config.yaml")).unwrap();
    let model = host
        .build("model_factory", &cfg.model_factory, &cfg.model_args, None)
        .unwrap();
    terrahost::weights::load_state_dict(&model, fx.weights()).unwrap();
    compare_outputs(&fx, &model);
}
