//! Prints the layout fingerprint of the plugin-api this fixture is built against, with
//! the current tree's renderer (plugin-api/abi/render.rs): how
//! scripts/abi/build_fixtures.sh renders the fingerprints of old releases.
#[path = "../../../plugin-api/abi/render.rs"]
mod render;

fn main() {
    use abi_stable::StableAbi;
    print!(
        "{}",
        render::render(<terrahost_plugin_api::PluginRoot_Ref as StableAbi>::LAYOUT)
    );
}
