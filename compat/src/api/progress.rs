//! `GET /sdapi/v1/progress` (a1111-api.md §7.11). Every key is always present: AIYA indexes
//! `current_image` directly, and SillyTavern and webuiapi poll until `progress == 0` and
//! `state.job_count == 0`.

use serde::{Deserialize, Serialize};

/// The progress response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressResponse {
    /// 0 when idle, else `min(1, 0.01 + job_no/job_count + (step/steps)/job_count)`.
    pub progress: f64,
    /// Seconds left, estimated as `elapsed / progress - elapsed`.
    pub eta_relative: f64,
    pub state: ProgressState,
    /// Raw base64 of the live preview, or null.
    pub current_image: Option<String>,
    /// Free text; usually null.
    pub textinfo: Option<String>,
}

/// A1111's `shared.state` as the progress response shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressState {
    pub skipped: bool,
    pub interrupted: bool,
    pub stopping_generation: bool,
    /// `""` when idle, `scripts_txt2img` / `scripts_img2img` while generating.
    pub job: String,
    /// Batches in the current job (`n_iter`), 0 when idle.
    pub job_count: i64,
    /// `YYYYmmddHHMMSS` of the job start.
    pub job_timestamp: String,
    /// Batches finished.
    pub job_no: i64,
    pub sampling_step: i64,
    pub sampling_steps: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_idle_serialises_every_key() {
        let v = serde_json::to_value(ProgressResponse::default()).unwrap();
        assert_eq!(
            v,
            json!({"progress": 0.0, "eta_relative": 0.0, "state": {"skipped": false, "interrupted": false,
                "stopping_generation": false, "job": "", "job_count": 0, "job_timestamp": "", "job_no": 0,
                "sampling_step": 0, "sampling_steps": 0}, "current_image": null, "textinfo": null})
        );
    }
}
