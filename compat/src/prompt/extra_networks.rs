//! Layer 1: extra-network tags `<kind:arg:arg...>` (LoRA, LyCORIS, hypernetworks and any
//! extension-defined kind).
//!
//! A1111 recognises `<`, one or more word characters, `:`, one or more characters other than
//! `>`, then `>`, anywhere in a positive prompt; every match is deleted from the text (spaces
//! and commas around it stay) and its arguments are the text after the first colon split on
//! every `:`. An argument that splits on `=` into exactly two parts is named, anything else is
//! positional. The LoRA handler then reads: name = positional 0, text-encoder multiplier =
//! positional 1 (default 1.0) overridden by `te=`, UNet multiplier = positional 2 (default: the
//! text-encoder value) overridden by `unet=`, dynamic rank = positional 3 or `dyn=`.

use std::ops::Range;

use super::text::{is_py_word, py_float, py_int, Sourced};
use crate::error::PromptError;

/// One extra-network tag found in a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraNetwork {
    /// The tag kind as written (`lora`, `lyco`, `hypernet`, ...).
    pub kind: String,
    /// Network name: positional argument 0 for LoRA kinds, argument 0 otherwise.
    pub name: String,
    /// Text-encoder multiplier (hypernetworks: their single multiplier). 1.0 when not given.
    pub te_multiplier: f64,
    /// UNet multiplier; equals `te_multiplier` when not given.
    pub unet_multiplier: f64,
    /// Dynamic rank (`dyn`) for LoRA kinds, when given.
    pub dyn_dim: Option<i64>,
    /// The raw arguments: the text after the first colon split on every `:`.
    pub args: Vec<String>,
    /// Arguments that are not `key=value`, in order.
    pub positional: Vec<String>,
    /// `key=value` arguments in order of first appearance; a repeated key keeps its first
    /// position and takes the last value (Python dict semantics).
    pub named: Vec<(String, String)>,
    /// Byte range of the whole tag in the prompt.
    pub span: Range<usize>,
    /// Why A1111's handler would reject these arguments, if it would. The multipliers then hold
    /// their defaults. A1111 logs such an error and applies none of the networks its handler
    /// received for the batch (one bad `<lora:...>` drops every LoRA of the prompt).
    pub error: Option<PromptError>,
}

impl ExtraNetwork {
    /// The handler kind A1111 dispatches to: `lyco` is an alias of `lora`.
    pub fn handler_kind(&self) -> &str {
        if self.kind == "lyco" {
            "lora"
        } else {
            &self.kind
        }
    }

    /// Value of a named argument.
    pub fn named_arg(&self, key: &str) -> Option<&str> {
        self.named.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn new(kind: &str, args_text: &str, span: Range<usize>) -> ExtraNetwork {
        let args: Vec<String> = args_text.split(':').map(str::to_owned).collect();
        let mut positional = Vec::new();
        let mut named: Vec<(String, String)> = Vec::new();
        for arg in &args {
            // A1111 splits with maxsplit=2, so `a=b=c` has three parts and is positional.
            let parts: Vec<&str> = arg.splitn(3, '=').collect();
            if let [key, value] = parts[..] {
                match named.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = value.to_owned(),
                    None => named.push((key.to_owned(), value.to_owned())),
                }
            } else {
                positional.push(arg.clone());
            }
        }
        let mut net = ExtraNetwork {
            kind: kind.to_owned(),
            name: String::new(),
            te_multiplier: 1.0,
            unet_multiplier: 1.0,
            dyn_dim: None,
            args,
            positional,
            named,
            span,
            error: None,
        };
        let outcome = match net.handler_kind() {
            "lora" => net.apply_lora_rules(),
            "hypernet" => net.apply_hypernet_rules(),
            // Kinds without a built-in handler are skipped by A1111 ("Skipping unknown extra
            // network"); their arguments are never converted, so they cannot be wrong.
            _ => {
                net.name = net.args[0].clone();
                Ok(())
            }
        };
        if let Err(problem) = outcome {
            net.te_multiplier = 1.0;
            net.unet_multiplier = 1.0;
            net.dyn_dim = None;
            net.error = Some(PromptError::ExtraNetworkArguments {
                position: net.span.start,
                tag: format!("<{}:{}>", net.kind, args_text),
                problem,
            });
        }
        net
    }

    /// LoRA argument conversion in A1111's order of evaluation, so the first failing conversion
    /// is the one reported (the positional multiplier is converted even when `te=` overrides it).
    fn apply_lora_rules(&mut self) -> Result<(), String> {
        let float_arg =
            |what: &str, s: &str| py_float(s).ok_or_else(|| format!("{what} `{s}` is not a number"));
        self.name = self.positional.first().cloned().ok_or_else(|| "no network name given".to_owned())?;
        let mut te = match self.positional.get(1) {
            Some(s) => float_arg("multiplier", s)?,
            None => 1.0,
        };
        if let Some(s) = self.named_arg("te") {
            te = float_arg("te", s)?;
        }
        let mut unet = match self.positional.get(2) {
            Some(s) => float_arg("unet multiplier", s)?,
            None => te,
        };
        if let Some(s) = self.named_arg("unet") {
            unet = float_arg("unet", s)?;
        }
        let mut dyn_dim = match self.positional.get(3) {
            Some(s) => Some(py_int(s).ok_or_else(|| format!("dyn `{s}` is not an integer"))?),
            None => None,
        };
        if let Some(s) = self.named_arg("dyn") {
            dyn_dim = Some(py_int(s).ok_or_else(|| format!("dyn `{s}` is not an integer"))?);
        }
        if !te.is_finite() || !unet.is_finite() {
            return Err("multiplier is not a finite number".to_owned());
        }
        self.te_multiplier = te;
        self.unet_multiplier = unet;
        self.dyn_dim = dyn_dim;
        Ok(())
    }

    /// Hypernetworks read raw items, not positional ones: name = item 0, multiplier = item 1.
    fn apply_hypernet_rules(&mut self) -> Result<(), String> {
        self.name = self.args[0].clone();
        if let Some(s) = self.args.get(1) {
            let m = py_float(s).ok_or_else(|| format!("multiplier `{s}` is not a number"))?;
            if !m.is_finite() {
                return Err("multiplier is not a finite number".to_owned());
            }
            self.te_multiplier = m;
            self.unet_multiplier = m;
        }
        Ok(())
    }
}

/// Finds the tag starting at byte `start` (which holds `<`): returns the end of the kind and the
/// end of the tag (just past `>`).
fn match_tag(prompt: &str, start: usize) -> Option<(usize, usize)> {
    let rest = &prompt[start + 1..];
    let kind_len: usize = rest.chars().take_while(|&c| is_py_word(c)).map(char::len_utf8).sum();
    if kind_len == 0 {
        return None;
    }
    let colon = start + 1 + kind_len;
    if prompt.as_bytes().get(colon) != Some(&b':') {
        return None;
    }
    // `[^>]+>`: the first `>` after the colon closes the tag, and at least one character must
    // lie between them.
    let close = colon + 1 + prompt[colon + 1..].find('>')?;
    (close > colon + 1).then_some((colon, close + 1))
}

/// Removes every extra-network tag from a sourced prompt, returning the remaining text and the
/// tags in order of appearance.
pub(crate) fn extract_sourced(prompt: &Sourced) -> (Sourced, Vec<ExtraNetwork>) {
    let text = prompt.text.as_str();
    let mut remaining = Sourced::default();
    let mut networks = Vec::new();
    let mut copied_to = 0;
    let mut pos = 0;
    while let Some(found) = text[pos..].find('<') {
        let start = pos + found;
        match match_tag(text, start) {
            Some((colon, end)) => {
                remaining.push_sourced(prompt, copied_to..start);
                let span = prompt.origin(start)..prompt.origin(end - 1) + 1;
                networks.push(ExtraNetwork::new(&text[start + 1..colon], &text[colon + 1..end - 1], span));
                copied_to = end;
                pos = end;
            }
            None => pos = start + 1,
        }
    }
    remaining.push_sourced(prompt, copied_to..text.len());
    (remaining, networks)
}

/// Removes every extra-network tag from `prompt`, returning the remaining text and the tags in
/// order of appearance, exactly as A1111 does for a positive prompt.
pub fn extract_extra_networks(prompt: &str) -> (String, Vec<ExtraNetwork>) {
    let (remaining, networks) = extract_sourced(&Sourced::identity(prompt));
    (remaining.text, networks)
}

/// Groups tags the way A1111 dispatches them: by handler kind (`lyco` joins `lora`) in order of
/// the first appearance of each *written* kind, tags of one kind in prompt order.
pub fn group_by_handler(networks: &[ExtraNetwork]) -> Vec<(String, Vec<&ExtraNetwork>)> {
    // A1111 first groups by the written kind (a dict keyed by name), then merges aliases into
    // their handler's list while walking that dict; reproducing both steps keeps the order of
    // `<lyco:a> <lora:b> <lyco:c>` as a, c, b.
    let mut by_written: Vec<(&str, Vec<&ExtraNetwork>)> = Vec::new();
    for net in networks {
        match by_written.iter_mut().find(|(k, _)| *k == net.kind) {
            Some((_, list)) => list.push(net),
            None => by_written.push((&net.kind, vec![net])),
        }
    }
    let mut grouped: Vec<(String, Vec<&ExtraNetwork>)> = Vec::new();
    for (_, list) in by_written {
        let handler = list[0].handler_kind();
        match grouped.iter_mut().find(|(k, _)| k == handler) {
            Some((_, existing)) => existing.extend(list),
            None => grouped.push((handler.to_owned(), list)),
        }
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds_and_args(prompt: &str) -> (String, Vec<(String, Vec<String>)>) {
        let (text, nets) = extract_extra_networks(prompt);
        (text, nets.into_iter().map(|n| (n.kind, n.args)).collect())
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn extract_spec_table_matches() {
        // prompts.md §1.2 table.
        assert_eq!(
            kinds_and_args("a cat <lora:foo:0.8>, b"),
            ("a cat , b".into(), vec![("lora".into(), strs(&["foo", "0.8"]))])
        );
        assert_eq!(
            kinds_and_args("<lora:bar:te=0.5:unet=1.2:dyn=16>"),
            ("".into(), vec![("lora".into(), strs(&["bar", "te=0.5", "unet=1.2", "dyn=16"]))])
        );
        assert_eq!(
            kinds_and_args("<lora:my lora v2:0.7>"),
            ("".into(), vec![("lora".into(), strs(&["my lora v2", "0.7"]))])
        );
        assert_eq!(kinds_and_args("<lora:foo>"), ("".into(), vec![("lora".into(), strs(&["foo"]))]));
        assert_eq!(kinds_and_args("<lora:>"), ("<lora:>".into(), vec![]));
        assert_eq!(kinds_and_args("<lo-ra:x:1>"), ("<lo-ra:x:1>".into(), vec![]));
        assert_eq!(kinds_and_args("a<lora:x:1>b"), ("ab".into(), vec![("lora".into(), strs(&["x", "1"]))]));
        assert_eq!(
            kinds_and_args("<hypernet:h:0.6> <lyco:ly:0.3:0.7>"),
            (
                " ".into(),
                vec![("hypernet".into(), strs(&["h", "0.6"])), ("lyco".into(), strs(&["ly", "0.3", "0.7"]))]
            )
        );
    }

    #[test]
    fn extract_tag_args_run_to_first_closing_angle() {
        // `[^>]+` swallows a nested `<`, so the outer tag ends at the first `>`.
        assert_eq!(
            kinds_and_args("<a:<lora:x:1> y>"),
            (" y>".into(), vec![("a".into(), strs(&["<lora", "x", "1"]))])
        );
        assert_eq!(kinds_and_args("<lora:x:1"), ("<lora:x:1".into(), vec![]));
        assert_eq!(kinds_and_args("<<lora:x>"), ("<".into(), vec![("lora".into(), strs(&["x"]))]));
    }

    #[test]
    fn lora_multipliers_follow_a1111_defaults() {
        let (_, nets) = extract_extra_networks("<lora:a> <lora:b:0.5> <lora:c:0.5:0.7> <lora:d:te=0.3>");
        let got: Vec<(&str, f64, f64)> =
            nets.iter().map(|n| (n.name.as_str(), n.te_multiplier, n.unet_multiplier)).collect();
        assert_eq!(got, vec![("a", 1.0, 1.0), ("b", 0.5, 0.5), ("c", 0.5, 0.7), ("d", 0.3, 0.3)]);
        let (_, nets) = extract_extra_networks("<lora:e:0.5:te=0.8:unet=1.2:dyn=16> <lyco:f:1:1:8>");
        assert_eq!((nets[0].te_multiplier, nets[0].unet_multiplier, nets[0].dyn_dim), (0.8, 1.2, Some(16)));
        assert_eq!((nets[1].name.as_str(), nets[1].dyn_dim), ("f", Some(8)));
        assert!(nets.iter().all(|n| n.error.is_none()));
    }

    #[test]
    fn lora_named_argument_with_two_equals_is_positional() {
        let (_, nets) = extract_extra_networks("<lora:x:a=b=c>");
        assert_eq!(nets[0].positional, strs(&["x", "a=b=c"]));
        assert!(nets[0].named.is_empty());
        // positional 1 is converted to a float and fails.
        assert!(nets[0].error.is_some());
    }

    #[test]
    fn lora_bad_arguments_reported_with_position() {
        let (_, nets) = extract_extra_networks("ab <lora:x:strong>");
        match &nets[0].error {
            Some(PromptError::ExtraNetworkArguments { position, tag, problem }) => {
                assert_eq!(*position, 3);
                assert_eq!(tag, "<lora:x:strong>");
                assert!(problem.contains("strong"), "{problem}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(nets[0].te_multiplier, 1.0);
        let (_, nets) = extract_extra_networks("<lora:te=1>");
        assert!(nets[0].error.is_some(), "a LoRA tag needs a positional name");
        let (_, nets) = extract_extra_networks("<lora:x:1:1:1.5>");
        assert!(nets[0].error.is_some(), "dyn must be an integer");
        let (_, nets) = extract_extra_networks("<lora:x:1:1:1:dyn=x>");
        assert!(nets[0].error.is_some());
    }

    #[test]
    fn unknown_kinds_are_stripped_without_errors() {
        let (text, nets) = extract_extra_networks("cat <steps:thirty>");
        assert_eq!(text, "cat ");
        assert_eq!(nets[0].kind, "steps");
        assert_eq!(nets[0].name, "thirty");
        assert!(nets[0].error.is_none());
    }

    #[test]
    fn hypernet_uses_raw_items() {
        let (_, nets) = extract_extra_networks("<hypernet:h> <hypernet:g:0.6> <hypernet:k:te=1>");
        assert_eq!((nets[0].name.as_str(), nets[0].te_multiplier), ("h", 1.0));
        assert_eq!((nets[1].name.as_str(), nets[1].te_multiplier), ("g", 0.6));
        assert!(nets[2].error.is_some(), "item 1 `te=1` is converted as a float");
    }

    #[test]
    fn group_by_handler_merges_lyco_into_lora() {
        let (_, nets) = extract_extra_networks("<lyco:a:1> <hypernet:h> <lora:b:1> <lyco:c:1>");
        let grouped = group_by_handler(&nets);
        let view: Vec<(&str, Vec<&str>)> =
            grouped.iter().map(|(k, v)| (k.as_str(), v.iter().map(|n| n.name.as_str()).collect())).collect();
        assert_eq!(view, vec![("lora", vec!["a", "c", "b"]), ("hypernet", vec!["h"])]);
    }

    #[test]
    fn extract_span_maps_to_original_bytes() {
        let (_, nets) = extract_extra_networks("é <lora:x:1> z");
        assert_eq!(nets[0].span, 3..13);
    }
}
