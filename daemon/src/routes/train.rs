//! `/train`: LoRA training jobs ([`crate::train`]).
//!
//! - `POST /train/lora` with a training request → the new job (with its `plan`). With
//!   `base_checkpoints` (a list) one job per base is created, each writing `<name>_<base>` (the
//!   base checkpoint's file stem), and the answer is `{"jobs": [...]}`.
//! - `GET /train/jobs` → `{"jobs": [...]}`, oldest first; `GET /train/jobs/{id}` → one job.
//! - `POST /train/jobs/{id}/cancel` → the job; a running job stops at its next step.
//!
//! An unknown id is a 404 in A1111's error shape; a bad request a 422 naming the field (or every
//! file or index that is not an image).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use compat::api::error::parse_body;
use models::train::plan::{plan, TrainPlan};
use serde_json::json;

use crate::catalog::CheckpointEntry;
use crate::error::ApiError;
use crate::train::dataset::Prepared;
use crate::train::dataset::{self, SideSpec};
use crate::train::request::{Recipe, TrainRequest};
use crate::train::{TrainJobRecord, TrainManager, TrainRun, TrainState};
use crate::AppState;

/// Keeps a base's stem usable in a file name and a `<lora:…>` tag.
fn clean_stem(stem: &str) -> String {
    stem.chars().map(|c| if c.is_alphanumeric() || matches!(c, '-' | '.') { c } else { '_' }).collect()
}

/// The run's plan (training spec §2): `models::train::plan` for the repeats and epochs, then the
/// real steps per epoch, counted per bucket on the prepared images, so that every planned epoch
/// runs to its end. Repeats given by kohya folder names count as given when all training images
/// share one value; the entry counts and the save/sample cadence are the ones the run will use.
fn plan_run(prepared: &Prepared, recipe: &Recipe) -> TrainPlan {
    let sides = || prepared.entries.iter().zip(&prepared.folder_repeats);
    let train: Vec<Option<u32>> = sides().filter(|(e, _)| !e.is_reg).map(|(_, f)| *f).collect();
    let reg_entries: u64 = sides().filter(|(e, _)| e.is_reg).map(|(_, f)| u64::from(f.unwrap_or(1))).sum();
    let folder = train.first().copied().flatten().filter(|&r| train.iter().all(|&f| f == Some(r)));
    let saturate = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let mut p = plan(
        saturate(train.len() as u64),
        saturate(reg_entries),
        recipe.batch_size,
        recipe.repeats.or(folder),
        recipe.max_train_epochs,
    );
    let entries = dataset::with_repeats(prepared, p.repeats);
    p = p.with_steps_per_epoch(dataset::steps_per_epoch(&entries, recipe.batch_size));
    let count = |reg: bool| entries.iter().filter(|e| e.is_reg == reg).map(|e| u64::from(e.repeats)).sum();
    (p.num_train_images, p.num_reg_images) = (count(false), count(true));
    if let Some(n) = recipe.save_every_n_epochs {
        p.save_every_n_epochs = n;
    }
    if let Some(n) = recipe.sample_every_n_epochs {
        p.sample_every_n_epochs = n;
    }
    p
}

pub async fn start(
    app: web::Data<AppState>,
    manager: web::Data<TrainManager>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: TrainRequest = parse_body(&body).map_err(ApiError::Validation)?;
    let name = request.name.clone().filter(|n| !n.trim().is_empty()).ok_or_else(|| {
        ApiError::Validation(compat::api::ValidationBody::new(
            vec!["body".into(), "name".into()],
            "field required",
            "value_error.missing",
        ))
    })?;
    let snapshot = app.catalog.snapshot();
    let wanted = request.bases();
    let bases: Vec<CheckpointEntry> = if wanted.is_empty() {
        vec![app.selected_entry().ok_or_else(|| {
            ApiError::field("base_checkpoint", "no base_checkpoint given and no checkpoint is selected")
        })?]
    } else {
        let field = if request.base_checkpoints.is_some() { "base_checkpoints" } else { "base_checkpoint" };
        wanted
            .iter()
            .map(|w| {
                snapshot
                    .find_checkpoint(w)
                    .cloned()
                    .ok_or_else(|| ApiError::field(field, format!("no checkpoint called {w:?}")))
            })
            .collect::<Result<_, _>>()?
    };
    let many = request.base_checkpoints.as_ref().is_some_and(|l| !l.is_empty());
    let cuda = app.device.is_cuda();
    let recipes = bases
        .iter()
        .map(|b| {
            let out_name = if many { format!("{name}_{}", clean_stem(&b.stem())) } else { name.clone() };
            request.resolve(&out_name, &b.title(), cuda)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if request.images.is_empty() && request.dataset_dir.is_none() {
        return Err(ApiError::field("images", "give training images in `images` or a `dataset_dir`"));
    }

    let data_dir = app.config.data_dir.clone();
    let first = recipes[0].clone();
    let req = request.clone();
    let prepared = super::blocking(move || {
        let mut bad = Vec::new();
        let [train, reg] = SideSpec::of_request(&req);
        let mut sources = dataset::collect(&train, &data_dir, &first, &mut bad)?;
        sources.extend(dataset::collect(&reg, &data_dir, &first, &mut bad)?);
        let prepared = dataset::prepare(sources, &first, bad)?;
        if prepared.entries.iter().all(|e| e.is_reg) {
            return Err(ApiError::field("images", "no training images found"));
        }
        Ok(prepared)
    })
    .await?;
    let prepared = Arc::new(prepared);

    let manager = manager.into_inner();
    let mut created = Vec::new();
    for (recipe, base) in recipes.into_iter().zip(&bases) {
        let job_plan = plan_run(&prepared, &recipe);
        let id = manager.new_id(&recipe.name);
        let dir = manager.root().join(&id);
        let entries = dataset::with_repeats(&prepared, job_plan.repeats);
        let (p, store_dir) = (prepared.clone(), dir.join("dataset"));
        super::blocking(move || {
            dataset::store(&p, &entries, &store_dir)
                .map_err(|e| ApiError::Runtime(format!("could not store the dataset: {e}")))
        })
        .await?;
        let record = TrainJobRecord {
            id: id.clone(),
            name: recipe.name.clone(),
            state: TrainState::Queued,
            step: 0,
            total_steps: job_plan.total_steps,
            epoch: 0,
            total_epochs: u64::from(job_plan.epochs),
            loss: None,
            lr: None,
            eta_seconds: None,
            outputs: Vec::new(),
            samples: Vec::new(),
            error: None,
            plan: job_plan,
            base_checkpoint: base.title(),
            checkpoint_path: base.path.clone(),
            resumed_from: None,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            recipe,
        };
        let run = Arc::new(TrainRun::new(record, dir, manager.lora_dir().to_path_buf(), manager.placement()));
        manager.add(run.clone());
        tracing::info!(job = %id, steps = run.snapshot().total_steps, "training job queued");
        created.push(run.snapshot());
    }
    if many {
        Ok(HttpResponse::Ok().json(json!({ "jobs": created })))
    } else {
        Ok(HttpResponse::Ok().json(&created[0]))
    }
}

pub async fn list(manager: web::Data<TrainManager>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"jobs": manager.list()}))
}

pub async fn get(manager: web::Data<TrainManager>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let run = manager.get(&id).ok_or_else(|| unknown(&id))?;
    Ok(HttpResponse::Ok().json(run.snapshot()))
}

pub async fn cancel(
    manager: web::Data<TrainManager>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = manager.cancel(&id).ok_or_else(|| unknown(&id))?;
    tracing::info!(job = %job.id, state = ?job.state, "training job asked to stop");
    Ok(HttpResponse::Ok().json(job))
}

fn unknown(id: &str) -> ApiError {
    ApiError::http(StatusCode::NOT_FOUND, format!("training job {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dataset::Entry;

    fn entry(is_reg: bool, size: u32) -> Entry {
        Entry { file: String::new(), caption: String::new(), is_reg, repeats: 1, width: size, height: size }
    }

    fn recipe(body: serde_json::Value) -> Recipe {
        serde_json::from_value::<TrainRequest>(body).unwrap().resolve("x", "base", false).unwrap()
    }

    #[test]
    fn plan_run_counts_steps_per_bucket_and_keeps_the_planned_epochs() {
        // Three training images in three sizes (buckets), batch 4: one short batch per bucket,
        // 3 steps per epoch where one bucket would need 1.
        let prepared = Prepared {
            entries: vec![entry(false, 64), entry(false, 128), entry(false, 192)],
            pixels: Vec::new(),
            folder_repeats: vec![None; 3],
        };
        let p = plan_run(&prepared, &recipe(json!({"batch_size": 4, "repeats": 1, "max_train_epochs": 2})));
        assert_eq!((p.repeats, p.epochs, p.steps_per_epoch, p.total_steps), (1, 2, 3, 6));
        assert_eq!((p.num_train_images, p.num_reg_images), (3, 0));
    }

    #[test]
    fn plan_run_folder_repeats_count_as_given_and_reg_entries_match_the_train_total() {
        // One `5_x` training image and three reg images: kohya cycles the reg images to 2+2+1.
        let prepared = Prepared {
            entries: vec![entry(false, 64), entry(true, 64), entry(true, 64), entry(true, 64)],
            pixels: Vec::new(),
            folder_repeats: vec![Some(5), Some(1), Some(1), Some(1)],
        };
        let r = recipe(json!({"batch_size": 2, "max_train_epochs": 20, "save_every_n_epochs": 5}));
        let p = plan_run(&prepared, &r);
        assert_eq!((p.repeats, p.repeats_planned), (5, false));
        assert_eq!((p.num_train_images, p.num_reg_images), (5, 5));
        assert_eq!((p.steps_per_epoch, p.total_steps), (5, 100), "10 entries in one bucket, batch 2");
        assert_eq!((p.save_every_n_epochs, p.sample_every_n_epochs), (5, 2), "given; 10% of 20");
        assert_eq!(p.notes.len(), 1, "5 entries per epoch exceed the 3 reg images: {:?}", p.notes);
    }
}
