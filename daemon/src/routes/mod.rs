//! The route table (a1111-api.md §2): one [`configure`] used by the server and by tests, and
//! [`ROUTES`], the same table as data for `/openapi.json` and `/docs`.
//!
//! - [`generate`]: txt2img and img2img.
//! - [`options`]: `/options` GET and POST.
//! - [`lists`]: the model, sampler, scheduler and upscaler lists and their refresh routes.
//! - [`system`]: progress, interrupt and skip, checkpoint unload and reload, png-info, extras,
//!   interrogate, memory, flags, scripts, and the documentation routes.
//! - [`wildcards`]: the wildcard collections and template expansion.
//! - [`forever`]: generate-forever jobs.
//! - [`train`]: LoRA training jobs.
//!
//! txt2img and img2img enter through [`crate::scripts`], which expands Dynamic Prompts and
//! Randomizer Keywords and runs the X/Y/Z plot around [`generate`].

pub mod forever;
pub mod generate;
pub mod lists;
pub mod options;
pub mod system;
pub mod train;
pub mod wildcards;

use actix_web::middleware::from_fn;
use actix_web::{web, Route};

use crate::error::ApiError;
use crate::middleware::basic_auth;

/// One documented route.
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
}

const fn doc(method: &'static str, path: &'static str, summary: &'static str) -> RouteDoc {
    RouteDoc { method, path, summary }
}

/// Every route, in A1111's order.
pub const ROUTES: &[RouteDoc] = &[
    doc("POST", "/sdapi/v1/txt2img", "Generate images from a prompt"),
    doc("POST", "/sdapi/v1/img2img", "Generate images from init images"),
    doc("POST", "/sdapi/v1/extra-single-image", "Upscale one image"),
    doc("POST", "/sdapi/v1/extra-batch-images", "Upscale several images"),
    doc("POST", "/sdapi/v1/png-info", "Read the generation parameters of a PNG"),
    doc("GET", "/sdapi/v1/progress", "Progress of the running job"),
    doc("POST", "/sdapi/v1/interrogate", "Caption an image"),
    doc("POST", "/sdapi/v1/interrupt", "Stop the running job"),
    doc("POST", "/sdapi/v1/skip", "Skip the running batch"),
    doc("GET", "/sdapi/v1/options", "All options"),
    doc("POST", "/sdapi/v1/options", "Change options (and the checkpoint)"),
    doc("GET", "/sdapi/v1/cmd-flags", "Command-line flags"),
    doc("GET", "/sdapi/v1/samplers", "Samplers"),
    doc("GET", "/sdapi/v1/schedulers", "Schedule types"),
    doc("GET", "/sdapi/v1/upscalers", "Upscalers"),
    doc("GET", "/sdapi/v1/latent-upscale-modes", "Latent upscale modes"),
    doc("GET", "/sdapi/v1/sd-models", "Checkpoints"),
    doc("GET", "/sdapi/v1/sd-vae", "Standalone VAEs"),
    doc("GET", "/sdapi/v1/hypernetworks", "Hypernetworks"),
    doc("GET", "/sdapi/v1/face-restorers", "Face restorers"),
    doc("GET", "/sdapi/v1/realesrgan-models", "RealESRGAN models"),
    doc("GET", "/sdapi/v1/prompt-styles", "Prompt styles from styles.csv"),
    doc("GET", "/sdapi/v1/embeddings", "Textual-inversion embeddings"),
    doc("POST", "/sdapi/v1/refresh-embeddings", "Rescan embeddings"),
    doc("POST", "/sdapi/v1/refresh-checkpoints", "Rescan checkpoints"),
    doc("POST", "/sdapi/v1/refresh-vae", "Rescan VAEs"),
    doc("POST", "/sdapi/v1/create/embedding", "Create an embedding (not supported)"),
    doc("POST", "/sdapi/v1/create/hypernetwork", "Create a hypernetwork (not supported)"),
    doc("POST", "/sdapi/v1/train/embedding", "Train an embedding (not supported)"),
    doc("POST", "/sdapi/v1/train/hypernetwork", "Train a hypernetwork (not supported)"),
    doc("GET", "/sdapi/v1/memory", "Memory use"),
    doc("POST", "/sdapi/v1/unload-checkpoint", "Move checkpoints off the device"),
    doc("POST", "/sdapi/v1/reload-checkpoint", "Load the selected checkpoint back"),
    doc("GET", "/sdapi/v1/scripts", "Script names"),
    doc("GET", "/sdapi/v1/script-info", "Script details"),
    doc("GET", "/sdapi/v1/extensions", "Installed extensions"),
    doc("GET", "/sdapi/v1/loras", "LoRAs"),
    doc("POST", "/sdapi/v1/refresh-loras", "Rescan LoRAs"),
    doc("GET", "/wildcards", "Wildcard collections"),
    doc("POST", "/wildcards/expand", "Expand a Dynamic Prompts template"),
    doc("GET", "/jobs/forever", "Generate-forever jobs"),
    doc("POST", "/jobs/forever", "Start generating a txt2img request forever"),
    doc("GET", "/jobs/forever/{id}", "One generate-forever job"),
    doc("PUT", "/jobs/forever/{id}", "Replace a generate-forever job's request from its next batch"),
    doc("DELETE", "/jobs/forever/{id}", "Stop a generate-forever job after its current batch"),
    doc("POST", "/train/lora", "Start training a LoRA (one job per base checkpoint)"),
    doc("GET", "/train/jobs", "Training jobs"),
    doc("GET", "/train/jobs/{id}", "One training job"),
    doc("POST", "/train/jobs/{id}/cancel", "Stop a training job"),
    doc("GET", "/internal/ping", "Liveness"),
    doc("GET", "/openapi.json", "This API's OpenAPI description"),
    doc("GET", "/docs", "This API's documentation"),
];

/// Registers every route. All sit behind `--api-auth` but the liveness and documentation routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use web::{get, post};
    let api = |cfg: &mut web::ServiceConfig, path: &str, routes: Vec<Route>| {
        let resource = routes.into_iter().fold(web::resource(path), |r, route| r.route(route));
        cfg.service(resource.default_service(web::to(method_not_allowed)).wrap(from_fn(basic_auth)));
    };
    let v1 = |p: &str| format!("/sdapi/v1/{p}");
    api(cfg, &v1("txt2img"), vec![post().to(crate::scripts::txt2img)]);
    api(cfg, &v1("img2img"), vec![post().to(crate::scripts::img2img)]);
    api(cfg, &v1("extra-single-image"), vec![post().to(system::extra_single_image)]);
    api(cfg, &v1("extra-batch-images"), vec![post().to(system::extra_batch_images)]);
    api(cfg, &v1("png-info"), vec![post().to(system::png_info)]);
    api(cfg, &v1("progress"), vec![get().to(system::progress)]);
    api(cfg, &v1("interrogate"), vec![post().to(system::interrogate)]);
    api(cfg, &v1("interrupt"), vec![post().to(system::interrupt)]);
    api(cfg, &v1("skip"), vec![post().to(system::skip)]);
    api(cfg, &v1("options"), vec![get().to(options::get_options), post().to(options::set_options)]);
    api(cfg, &v1("cmd-flags"), vec![get().to(system::cmd_flags)]);
    api(cfg, &v1("samplers"), vec![get().to(lists::samplers)]);
    api(cfg, &v1("schedulers"), vec![get().to(lists::schedulers)]);
    api(cfg, &v1("upscalers"), vec![get().to(lists::upscalers)]);
    api(cfg, &v1("latent-upscale-modes"), vec![get().to(lists::latent_upscale_modes)]);
    api(cfg, &v1("sd-models"), vec![get().to(lists::sd_models)]);
    api(cfg, &v1("sd-vae"), vec![get().to(lists::sd_vae)]);
    api(cfg, &v1("hypernetworks"), vec![get().to(lists::empty_list)]);
    api(cfg, &v1("face-restorers"), vec![get().to(lists::empty_list)]);
    api(cfg, &v1("realesrgan-models"), vec![get().to(lists::empty_list)]);
    api(cfg, &v1("prompt-styles"), vec![get().to(lists::prompt_styles)]);
    api(cfg, &v1("embeddings"), vec![get().to(lists::embeddings)]);
    api(cfg, &v1("refresh-embeddings"), vec![post().to(lists::refresh_embeddings)]);
    api(cfg, &v1("refresh-checkpoints"), vec![post().to(lists::refresh_checkpoints)]);
    api(cfg, &v1("refresh-vae"), vec![post().to(lists::refresh_vae)]);
    for training in ["create/embedding", "create/hypernetwork", "train/embedding", "train/hypernetwork"] {
        api(cfg, &v1(training), vec![post().to(system::training)]);
    }
    api(cfg, &v1("memory"), vec![get().to(system::memory)]);
    api(cfg, &v1("unload-checkpoint"), vec![post().to(system::unload_checkpoint)]);
    api(cfg, &v1("reload-checkpoint"), vec![post().to(system::reload_checkpoint)]);
    api(cfg, &v1("scripts"), vec![get().to(system::scripts)]);
    api(cfg, &v1("script-info"), vec![get().to(system::script_info)]);
    api(cfg, &v1("extensions"), vec![get().to(lists::empty_list)]);
    api(cfg, &v1("loras"), vec![get().to(lists::loras)]);
    api(cfg, &v1("refresh-loras"), vec![post().to(lists::refresh_loras)]);
    api(cfg, "/wildcards", vec![get().to(wildcards::list)]);
    api(cfg, "/wildcards/expand", vec![post().to(wildcards::expand)]);
    api(cfg, "/jobs/forever", vec![get().to(forever::list), post().to(forever::start)]);
    let one_job =
        vec![get().to(forever::get), web::put().to(forever::replace), web::delete().to(forever::stop)];
    api(cfg, "/jobs/forever/{id}", one_job);
    api(cfg, "/train/lora", vec![post().to(train::start)]);
    api(cfg, "/train/jobs", vec![get().to(train::list)]);
    api(cfg, "/train/jobs/{id}", vec![get().to(train::get)]);
    api(cfg, "/train/jobs/{id}/cancel", vec![post().to(train::cancel)]);

    let open = |cfg: &mut web::ServiceConfig, path: &str, route: Route| {
        cfg.service(web::resource(path).route(route).default_service(web::to(method_not_allowed)));
    };
    open(cfg, "/internal/ping", get().to(system::ping));
    open(cfg, "/openapi.json", get().to(system::openapi));
    open(cfg, "/docs", get().to(system::docs));
    cfg.default_service(web::to(not_found));
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

async fn method_not_allowed() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Runs blocking work on actix's blocking pool, turning a panic there into a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(f).await.map_err(|e| ApiError::Runtime(format!("a background task failed: {e}")))?
}
