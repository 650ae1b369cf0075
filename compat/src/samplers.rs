//! A1111 1.10 sampler and scheduler names: the `/sdapi/v1/samplers` and `/sdapi/v1/schedulers`
//! lists, and the resolution of a request's `sampler_name` / `scheduler` (A1111's
//! `get_sampler_and_scheduler`), including legacy combined names such as `"DPM++ 2M Karras"`.
//!
//! Each entry carries a plain string id. The ids are the ones `models::sampling::SamplerKind::id`
//! and `SchedulerKind::id` use; this crate does not depend on `models`, the daemon maps between
//! the two.

/// One entry of `/sdapi/v1/samplers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplerInfo {
    /// Display name (what requests, infotexts and the API list use).
    pub name: &'static str,
    /// Plain id shared with the sampler implementation.
    pub id: &'static str,
    /// A1111 aliases (not accepted by the API, used for infotext parsing).
    pub aliases: &'static [&'static str],
    /// The `options` object; values are strings as the API serializes them.
    pub options: &'static [(&'static str, &'static str)],
}

/// One entry of `/sdapi/v1/schedulers`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerInfo {
    /// Lower-case name (what SillyTavern, webuiapi send).
    pub name: &'static str,
    /// Label (what the UI and infotext use: "Schedule type").
    pub label: &'static str,
    pub aliases: Option<&'static [&'static str]>,
    pub default_rho: f64,
    pub need_inner_model: bool,
}

const KARRAS: (&str, &str) = ("scheduler", "karras");
const EXPONENTIAL: (&str, &str) = ("scheduler", "exponential");
const SECOND_ORDER: (&str, &str) = ("second_order", "True");
const BROWNIAN: (&str, &str) = ("brownian_noise", "True");
const USES_ENSD: (&str, &str) = ("uses_ensd", "True");
const DISCARD: (&str, &str) = ("discard_next_to_last_sigma", "True");

/// A1111 1.10's samplers in `/sdapi/v1/samplers` order; the first is the fallback for unknown
/// names.
pub const SAMPLERS: [SamplerInfo; 20] = [
    SamplerInfo { name: "DPM++ 2M", id: "dpmpp_2m", aliases: &["k_dpmpp_2m"], options: &[KARRAS] },
    SamplerInfo {
        name: "DPM++ SDE",
        id: "dpmpp_sde",
        aliases: &["k_dpmpp_sde"],
        options: &[KARRAS, SECOND_ORDER, BROWNIAN],
    },
    SamplerInfo {
        name: "DPM++ 2M SDE",
        id: "dpmpp_2m_sde",
        aliases: &["k_dpmpp_2m_sde"],
        options: &[EXPONENTIAL, BROWNIAN],
    },
    SamplerInfo {
        name: "DPM++ 2M SDE Heun",
        id: "dpmpp_2m_sde_heun",
        aliases: &["k_dpmpp_2m_sde_heun"],
        options: &[EXPONENTIAL, BROWNIAN, ("solver_type", "heun")],
    },
    SamplerInfo {
        name: "DPM++ 2S a",
        id: "dpmpp_2s_ancestral",
        aliases: &["k_dpmpp_2s_a"],
        options: &[KARRAS, USES_ENSD, SECOND_ORDER],
    },
    SamplerInfo {
        name: "DPM++ 3M SDE",
        id: "dpmpp_3m_sde",
        aliases: &["k_dpmpp_3m_sde"],
        options: &[EXPONENTIAL, DISCARD, BROWNIAN],
    },
    SamplerInfo {
        name: "Euler a",
        id: "euler_ancestral",
        aliases: &["k_euler_a", "k_euler_ancestral"],
        options: &[USES_ENSD],
    },
    SamplerInfo { name: "Euler", id: "euler", aliases: &["k_euler"], options: &[] },
    SamplerInfo { name: "LMS", id: "lms", aliases: &["k_lms"], options: &[] },
    SamplerInfo { name: "Heun", id: "heun", aliases: &["k_heun"], options: &[SECOND_ORDER] },
    SamplerInfo {
        name: "DPM2",
        id: "dpm_2",
        aliases: &["k_dpm_2"],
        options: &[KARRAS, DISCARD, SECOND_ORDER],
    },
    SamplerInfo {
        name: "DPM2 a",
        id: "dpm_2_ancestral",
        aliases: &["k_dpm_2_a"],
        options: &[KARRAS, DISCARD, USES_ENSD, SECOND_ORDER],
    },
    SamplerInfo { name: "DPM fast", id: "dpm_fast", aliases: &["k_dpm_fast"], options: &[USES_ENSD] },
    SamplerInfo { name: "DPM adaptive", id: "dpm_adaptive", aliases: &["k_dpm_ad"], options: &[USES_ENSD] },
    SamplerInfo { name: "Restart", id: "restart", aliases: &["restart"], options: &[KARRAS, SECOND_ORDER] },
    SamplerInfo { name: "DDIM", id: "ddim", aliases: &["ddim"], options: &[] },
    SamplerInfo { name: "DDIM CFG++", id: "ddim_cfgpp", aliases: &["ddim_cfgpp"], options: &[] },
    SamplerInfo { name: "PLMS", id: "plms", aliases: &["plms"], options: &[] },
    SamplerInfo { name: "UniPC", id: "unipc", aliases: &["unipc"], options: &[] },
    SamplerInfo { name: "LCM", id: "lcm", aliases: &["k_lcm"], options: &[] },
];

/// A1111 1.10's schedulers in `/sdapi/v1/schedulers` order; the first ("Automatic") is the
/// fallback for unknown names.
pub const SCHEDULERS: [SchedulerInfo; 12] = [
    SchedulerInfo {
        name: "automatic",
        label: "Automatic",
        aliases: None,
        default_rho: -1.0,
        need_inner_model: false,
    },
    SchedulerInfo {
        name: "uniform",
        label: "Uniform",
        aliases: None,
        default_rho: -1.0,
        need_inner_model: true,
    },
    SchedulerInfo {
        name: "karras",
        label: "Karras",
        aliases: None,
        default_rho: 7.0,
        need_inner_model: false,
    },
    SchedulerInfo {
        name: "exponential",
        label: "Exponential",
        aliases: None,
        default_rho: -1.0,
        need_inner_model: false,
    },
    SchedulerInfo {
        name: "polyexponential",
        label: "Polyexponential",
        aliases: None,
        default_rho: 1.0,
        need_inner_model: false,
    },
    SchedulerInfo {
        name: "sgm_uniform",
        label: "SGM Uniform",
        aliases: Some(&["SGMUniform"]),
        default_rho: -1.0,
        need_inner_model: true,
    },
    SchedulerInfo {
        name: "kl_optimal",
        label: "KL Optimal",
        aliases: None,
        default_rho: -1.0,
        need_inner_model: false,
    },
    SchedulerInfo {
        name: "align_your_steps",
        label: "Align Your Steps",
        aliases: None,
        default_rho: -1.0,
        need_inner_model: false,
    },
    SchedulerInfo {
        name: "simple",
        label: "Simple",
        aliases: None,
        default_rho: -1.0,
        need_inner_model: true,
    },
    SchedulerInfo {
        name: "normal",
        label: "Normal",
        aliases: None,
        default_rho: -1.0,
        need_inner_model: true,
    },
    SchedulerInfo { name: "ddim", label: "DDIM", aliases: None, default_rho: -1.0, need_inner_model: true },
    SchedulerInfo { name: "beta", label: "Beta", aliases: None, default_rho: -1.0, need_inner_model: true },
];

impl SamplerInfo {
    /// The value of option `key`, if the sampler has it.
    pub fn option(&self, key: &str) -> Option<&'static str> {
        self.options.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The scheduler "Automatic" resolves to for this sampler (by scheduler name).
    pub fn default_scheduler(&self) -> Option<&'static str> {
        self.option("scheduler")
    }
}

/// The sampler with exactly this display name (case-sensitive, as the API looks it up).
pub fn sampler_by_name(name: &str) -> Option<&'static SamplerInfo> {
    SAMPLERS.iter().find(|s| s.name == name)
}

/// The sampler with this plain id.
pub fn sampler_by_id(id: &str) -> Option<&'static SamplerInfo> {
    SAMPLERS.iter().find(|s| s.id == id)
}

/// The sampler whose name or alias equals `text` ignoring ASCII case (A1111's `samplers_map`,
/// used when reading infotexts).
pub fn sampler_by_name_or_alias(text: &str) -> Option<&'static SamplerInfo> {
    let lower = text.to_ascii_lowercase();
    SAMPLERS.iter().find(|s| {
        s.name.to_ascii_lowercase() == lower || s.aliases.iter().any(|a| a.to_ascii_lowercase() == lower)
    })
}

/// The scheduler with this name or label (case-sensitive; A1111's `schedulers_map`).
pub fn scheduler_by_name_or_label(text: &str) -> Option<&'static SchedulerInfo> {
    SCHEDULERS.iter().find(|s| s.name == text || s.label == text)
}

/// The result of resolving a request's sampler and scheduler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    pub sampler: &'static SamplerInfo,
    pub scheduler: &'static SchedulerInfo,
    /// Whether the sampler name was unknown and fell back to the first sampler (A1111 logs a
    /// warning).
    pub sampler_fallback: bool,
}

/// A1111 1.10's `get_sampler_and_scheduler(sampler_name, scheduler, convert_automatic=True)`:
/// - no sampler name: the first sampler (`DPM++ 2M`);
/// - a name ending in `" " + X` for a scheduler's label, name or alias has that suffix removed and
///   the scheduler taken from it (every scheduler is tried in order, on the shortened name);
/// - the remaining name is looked up exactly; unknown names fall back to the first sampler;
/// - an unknown scheduler is `Automatic`; a scheduler equal to the sampler's default becomes
///   `Automatic`.
pub fn resolve(sampler_name: Option<&str>, scheduler: Option<&str>) -> Resolved {
    let mut found = scheduler.and_then(scheduler_by_name_or_label).unwrap_or(&SCHEDULERS[0]);
    let mut name: &str = match sampler_name {
        Some(n) if !n.is_empty() => n,
        _ => SAMPLERS[0].name,
    };
    for sched in SCHEDULERS.iter() {
        let options =
            [sched.label, sched.name].into_iter().chain(sched.aliases.unwrap_or(&[]).iter().copied());
        for option in options {
            if let Some(stripped) = name.strip_suffix(option).and_then(|rest| rest.strip_suffix(' ')) {
                found = sched;
                name = stripped;
                break;
            }
        }
    }
    let (sampler, sampler_fallback) = match sampler_by_name(name) {
        Some(s) => (s, false),
        None => (&SAMPLERS[0], true),
    };
    if sampler.default_scheduler() == Some(found.name) {
        found = &SCHEDULERS[0];
    }
    Resolved { sampler, scheduler: found, sampler_fallback }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_legacy_karras_name_splits_and_normalizes() {
        let r = resolve(Some("DPM++ 2M Karras"), None);
        assert_eq!(r.sampler.name, "DPM++ 2M");
        // Karras is DPM++ 2M's default, so it is reported as Automatic.
        assert_eq!(r.scheduler.label, "Automatic");
        assert!(!r.sampler_fallback);
    }

    #[test]
    fn resolve_legacy_name_with_non_default_scheduler_keeps_it() {
        let r = resolve(Some("Euler Karras"), None);
        assert_eq!((r.sampler.name, r.scheduler.label), ("Euler", "Karras"));
        let r = resolve(Some("DPM++ 2M SDE Heun Karras"), None);
        assert_eq!((r.sampler.name, r.scheduler.label), ("DPM++ 2M SDE Heun", "Karras"));
        let r = resolve(Some("DPM++ 3M SDE Exponential"), None);
        assert_eq!((r.sampler.name, r.scheduler.label), ("DPM++ 3M SDE", "Automatic"));
        let r = resolve(Some("Euler SGMUniform"), None);
        assert_eq!((r.sampler.name, r.scheduler.label), ("Euler", "SGM Uniform"));
        // Scheduler names (lower case) are accepted as suffixes too.
        let r = resolve(Some("Heun karras"), None);
        assert_eq!((r.sampler.name, r.scheduler.label), ("Heun", "Karras"));
    }

    #[test]
    fn resolve_suffix_overrides_scheduler_field() {
        let r = resolve(Some("Euler a Exponential"), Some("karras"));
        assert_eq!((r.sampler.name, r.scheduler.label), ("Euler a", "Exponential"));
    }

    #[test]
    fn resolve_unknown_or_alias_sampler_falls_back_to_first() {
        let r = resolve(Some("k_euler_a"), None);
        assert_eq!(r.sampler.name, "DPM++ 2M");
        assert!(r.sampler_fallback);
        let r = resolve(Some("euler"), None);
        assert_eq!(r.sampler.name, "DPM++ 2M");
    }

    #[test]
    fn resolve_missing_sampler_is_first_and_scheduler_names_or_labels_work() {
        let r = resolve(None, Some("exponential"));
        assert_eq!((r.sampler.name, r.scheduler.label), ("DPM++ 2M", "Exponential"));
        let r = resolve(Some("Euler"), Some("Align Your Steps"));
        assert_eq!(r.scheduler.name, "align_your_steps");
        let r = resolve(Some("Euler"), Some("KARRAS"));
        assert_eq!(r.scheduler.label, "Automatic");
    }

    #[test]
    fn sampler_name_does_not_lose_ddim_prefix() {
        // "DDIM" is also a scheduler label, but only a " DDIM" suffix is stripped.
        let r = resolve(Some("DDIM"), None);
        assert_eq!(r.sampler.name, "DDIM");
        let r = resolve(Some("DDIM CFG++"), None);
        assert_eq!(r.sampler.name, "DDIM CFG++");
    }

    #[test]
    fn aliases_resolve_case_insensitively_for_infotexts() {
        assert_eq!(sampler_by_name_or_alias("K_DPMPP_2M").unwrap().name, "DPM++ 2M");
        assert_eq!(sampler_by_name_or_alias("euler a").unwrap().id, "euler_ancestral");
        assert!(sampler_by_name_or_alias("nope").is_none());
    }

    #[test]
    fn tables_have_unique_names_and_ids() {
        for (i, a) in SAMPLERS.iter().enumerate() {
            for b in &SAMPLERS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.id, b.id);
            }
            assert_eq!(sampler_by_id(a.id), Some(a));
        }
        assert_eq!(SCHEDULERS.len(), 12);
        assert_eq!(SAMPLERS[0].name, "DPM++ 2M");
        assert_eq!(SAMPLERS[5].option("discard_next_to_last_sigma"), Some("True"));
    }
}
