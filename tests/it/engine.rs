//! The engine against transformers: logits at every position, greedy tokens, KV-cache reuse.

use candle_core::{D, Tensor};
use infill::complete;
use infill::model::FimOrder;
use infill::model::generate::{self, Flow, Limits, Sampling, StopReason};
use infill::model::{LoadOptions, load};

use crate::{FAMILIES, golden, max_abs_diff, open};

/// transformers and our Llama/Qwen2 decoder agree on every position of one forward.
#[test]
fn llama_family_logits_equal_transformers_at_every_position() {
    for name in ["qwen2", "llama"] {
        let model = open(&crate::fixture(name));
        let g = golden(name);
        let logits = crate::logits_all(&model, &g.ids);
        let diff = max_abs_diff(&logits, &g.logits);
        eprintln!(
            "{name}: max |logit - transformers| over {} positions = {diff:e}",
            g.ids.len()
        );
        assert!(diff < 1e-4, "{name}: {diff}");
    }
}

/// Feeding the sequence token by token through the cache reproduces every golden row, for all
/// four families (StarCoder2 and GPT-BigCode only expose last-position logits).
#[test]
fn cached_incremental_logits_equal_transformers_for_every_family() {
    for name in FAMILIES {
        let mut model = open(&crate::fixture(name));
        let g = golden(name);
        let mut worst = 0f32;
        for end in g.prompt_len..=g.ids.len() {
            let (logits, prefill) = model.network.logits_after(&g.ids[..end]).unwrap();
            if end > g.prompt_len {
                assert_eq!(
                    prefill.computed, 1,
                    "{name}: the cache must serve all but the new token"
                );
            }
            let want = g.logits.get(end - 1).unwrap();
            worst = worst.max(max_abs_diff(&logits, &want));
        }
        eprintln!("{name}: max |cached logit - transformers| = {worst:e}");
        assert!(worst < 1e-4, "{name}: {worst}");
    }
}

/// Our prompt assembly gives the tokens the reference built, and greedy generation the same tokens.
#[test]
fn greedy_generation_equals_transformers_for_every_family() {
    for name in FAMILIES {
        let mut model = open(&crate::fixture(name));
        let g = golden(name);
        let prompt =
            complete::build_prompt(&model.tokenizer, &g.prefix, &g.suffix, 200, FimOrder::Psm)
                .unwrap();
        assert_eq!(prompt.ids, g.ids[..g.prompt_len], "{name}: prompt tokens");
        let limits = Limits {
            max_tokens: g.ids.len() - g.prompt_len,
            ..Limits::default()
        };
        let out = generate::generate(
            &mut model.network,
            &model.tokenizer,
            &prompt.ids,
            &Sampling::default(),
            &limits,
            None,
            |_, _| Flow::Continue,
        )
        .unwrap();
        let ours: Vec<u32> = out.tokens.iter().map(|t| t.id).collect();
        let want = &g.ids[g.prompt_len..];
        assert_eq!(ours, want[..ours.len()], "{name}: greedy tokens");
        match out.stop {
            StopReason::MaxTokens => assert_eq!(ours.len(), want.len()),
            // We stop on end tokens that the reference loop (no stop tokens) ran past.
            StopReason::EndToken => assert!(
                model.tokenizer.fim().stops.contains(&want[ours.len()])
                    || want[ours.len()] == model.tokenizer.fim().middle
            ),
            other => panic!("{name}: unexpected stop {other:?}"),
        }
        // Every token's probability and rank describe the reference logits at its position.
        for (i, t) in out.tokens.iter().enumerate() {
            let row = g.logits.get(g.prompt_len - 1 + i).unwrap();
            let probs = candle_nn::ops::softmax(&row, D::Minus1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(
                (probs[t.id as usize] - t.prob).abs() < 1e-4,
                "{name}: prob of token {i}"
            );
            assert_eq!(t.rank, 1, "greedy picks rank 1");
            assert_eq!(t.top[0].id, t.id);
        }
        // The completion is the whole characters of the token bytes put together: these random
        // models write bytes that are not UTF-8, which end the text rather than become U+FFFD.
        let bytes: Vec<u8> = out.tokens.iter().flat_map(|t| t.bytes.clone()).collect();
        assert_eq!(crate::whole_chars(&bytes), out.text);
        assert!(!out.text.contains('\u{FFFD}'), "{name}: {:?}", out.text);
    }
}

/// A prompt that shares a prefix with the previous one reuses the cache and matches a fresh model.
#[test]
fn shared_prefix_reuse_equals_a_fresh_run() {
    for name in FAMILIES {
        let mut warm = open(&crate::fixture(name));
        let g = golden(name);
        let first = &g.ids[..g.prompt_len];
        let mut second = g.ids[..g.prompt_len - 3].to_vec();
        second.extend_from_slice(&g.ids[g.prompt_len..g.prompt_len + 4]);
        warm.network.logits_after(first).unwrap();
        let (reused_logits, prefill) = warm.network.logits_after(&second).unwrap();
        let mut fresh = open(&crate::fixture(name));
        let (fresh_logits, _) = fresh.network.logits_after(&second).unwrap();
        assert!(max_abs_diff(&reused_logits, &fresh_logits) < 1e-5, "{name}");
        if name == "qwen2" || name == "llama" {
            assert_eq!(
                prefill.reused,
                g.prompt_len - 3,
                "{name}: truncated cache is reused"
            );
        }
        // The same prompt twice computes one token, not the whole prompt.
        let (_, again) = warm.network.logits_after(&second).unwrap();
        if name == "qwen2" || name == "llama" {
            assert_eq!(again.computed, 1);
        }
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed_and_respects_max_tokens() {
    let mut model = open(&crate::fixture("qwen2"));
    let g = golden("qwen2");
    let prompt = &g.ids[..g.prompt_len];
    let run = |model: &mut infill::model::Model, seed| {
        let s = Sampling {
            temperature: 1.5,
            top_k: 50,
            top_p: 0.95,
            seed,
        };
        let limits = Limits {
            max_tokens: 12,
            ..Limits::default()
        };
        generate::generate(
            &mut model.network,
            &model.tokenizer,
            prompt,
            &s,
            &limits,
            None,
            |_, _| Flow::Continue,
        )
        .unwrap()
    };
    let ids = |g: generate::Generation| g.tokens.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let a = ids(run(&mut model, 11));
    let b = ids(run(&mut model, 11));
    assert_eq!(a, b);
    assert_ne!(a, ids(run(&mut model, 12)));
    assert!(a.len() <= 12);
}

#[test]
fn cancellation_and_callbacks_stop_generation() {
    let mut model = open(&crate::fixture("llama"));
    let g = golden("llama");
    let prompt = &g.ids[..g.prompt_len];
    let limits = Limits {
        max_tokens: 50,
        ..Limits::default()
    };
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let out = generate::generate(
        &mut model.network,
        &model.tokenizer,
        prompt,
        &Sampling::default(),
        &limits,
        Some(&cancel),
        |_, _| Flow::Continue,
    )
    .unwrap();
    assert_eq!((out.stop, out.tokens.len()), (StopReason::Cancelled, 0));
    let mut seen = Vec::new();
    let out = generate::generate(
        &mut model.network,
        &model.tokenizer,
        prompt,
        &Sampling::default(),
        &limits,
        None,
        |t, text| {
            seen.push((t.id, text.to_string()));
            if seen.len() == 2 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        },
    )
    .unwrap();
    assert_eq!(out.stop, StopReason::Caller);
    assert_eq!(out.tokens.len(), 2);
    assert!(out.text.starts_with(&seen[1].1));
    let budget = Limits {
        time_budget: Some(std::time::Duration::ZERO),
        ..limits
    };
    let out = generate::generate(
        &mut model.network,
        &model.tokenizer,
        prompt,
        &Sampling::default(),
        &budget,
        None,
        |_, _| Flow::Continue,
    )
    .unwrap();
    assert_eq!(out.stop, StopReason::TimeBudget);
}

/// A long document keeps the lines nearest the cursor, cut at line boundaries, within the window.
#[test]
fn prompt_budget_keeps_text_nearest_the_cursor_at_line_boundaries() {
    let model = open(&crate::fixture("qwen2"));
    let prefix: String = (0..200)
        .map(|i| format!("x{i} = compute({i})\n"))
        .collect::<String>()
        + "y = ";
    let suffix: String = (0..200).map(|i| format!("print(z{i})\n")).collect();
    let budget = 120;
    let p =
        complete::build_prompt(&model.tokenizer, &prefix, &suffix, budget, FimOrder::Psm).unwrap();
    assert!(p.prefix_tokens + p.suffix_tokens <= budget);
    assert!(
        p.prefix_tokens >= budget / 2,
        "the prefix gets the larger share: {p:?}"
    );
    assert!(
        p.suffix_tokens >= budget / 8,
        "the suffix keeps some room: {p:?}"
    );
    assert!(
        prefix[..p.prefix_dropped_bytes].ends_with('\n'),
        "prefix cut on a line start"
    );
    let kept_suffix = &suffix[..suffix.len() - p.suffix_dropped_bytes];
    assert!(kept_suffix.ends_with('\n'), "suffix cut on a line end");
    // A short suffix lends its share to the prefix.
    let q = complete::build_prompt(&model.tokenizer, &prefix, "\n", budget, FimOrder::Psm).unwrap();
    assert!(q.prefix_tokens > p.prefix_tokens);
    // SPM puts the suffix first and lets the prefix run into the middle.
    let spm = complete::build_prompt(&model.tokenizer, "ab", "cd", budget, FimOrder::Spm).unwrap();
    let fim = model.tokenizer.fim();
    assert_eq!(&spm.ids[..2], &[fim.prefix, fim.suffix]);
    assert_ne!(*spm.ids.last().unwrap(), fim.middle);
}

/// `--dtype bf16` runs our bf16 kernel: close to transformers' f32 logits, within bf16 rounding
/// (8 bits of mantissa per weight: about 0.4% each, compounding through the layers of these
/// deliberately large random weights), and choosing the same token almost everywhere.
#[test]
fn bf16_kernels_stay_close_to_the_f32_reference() {
    for name in ["qwen2", "llama"] {
        let files = infill::model::load::locate_dir(&crate::fixture(name)).unwrap();
        let opts = infill::model::LoadOptions {
            dtype: Some(candle_core::DType::BF16),
            ..Default::default()
        };
        let mut model = infill::model::load::load(&files, &opts).unwrap();
        let g = golden(name);
        let (mut worst, mut same, mut total) = (0f32, 0, 0);
        for end in g.prompt_len..=g.ids.len() {
            let (logits, _) = model.network.logits_after(&g.ids[..end]).unwrap();
            let want = g.logits.get(end - 1).unwrap();
            worst = worst.max(max_abs_diff(&logits, &want));
            let argmax = |t: &Tensor| t.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            same += usize::from(argmax(&logits) == argmax(&want));
            total += 1;
        }
        let scale = crate::max_abs(&g.logits);
        eprintln!(
            "{name}: bf16 max |logit - transformers f32| = {worst:e} (logits up to {scale:.1}); same top token {same}/{total}"
        );
        assert!(worst < 0.05 * scale, "{name}: {worst} vs scale {scale}");
        assert!(worst > 0.0, "bf16 must actually round the weights");
        assert!(
            same * 10 >= total * 9,
            "{name}: top token agrees at only {same}/{total} positions"
        );
    }
}

/// With no `--dtype`, a checkpoint stored in bf16 runs on the bf16 kernel (lossless for it).
#[test]
fn auto_precision_follows_the_checkpoint() {
    let tmp = crate::scratch_copy("qwen2");
    let path = tmp.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let narrowed: std::collections::HashMap<_, _> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(candle_core::DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&narrowed, &path).unwrap();
    let g = golden("qwen2");
    let ids = &g.ids[..g.prompt_len];
    let load = |dtype| {
        let files = infill::model::load::locate_dir(tmp.path()).unwrap();
        let opts = infill::model::LoadOptions {
            dtype,
            ..Default::default()
        };
        let mut m = infill::model::load::load(&files, &opts).unwrap();
        // The prompt but its last token, then that token alone: a decoding step, where the bf16
        // kernel's dot products differ from candle's f32 matmul in rounding (in prefill both
        // widen to the same f32 GEMM).
        m.network.logits_after(&ids[..ids.len() - 1]).unwrap();
        m.network.logits_after(ids).unwrap().0
    };
    let auto = load(None);
    let bf16 = load(Some(candle_core::DType::BF16));
    let f32 = load(Some(candle_core::DType::F32));
    assert_eq!(
        max_abs_diff(&auto, &bf16),
        0.0,
        "auto picks the bf16 kernel for a bf16 checkpoint"
    );
    assert!(max_abs_diff(&auto, &f32) > 0.0);
}

/// The prompt order is the model's own unless the caller names one: config.json's
/// `infill_fim_order` sets it, PSM otherwise, and a value that is neither is refused by name.
#[test]
fn the_model_config_chooses_the_prompt_order() {
    let g = golden("qwen2");
    let tmp = crate::scratch_copy("qwen2");
    let config_path = tmp.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    let text = format!("{}{}", g.prefix, g.suffix);
    let cursor = infill::text::Cursor::from_byte(&text, g.prefix.len()).unwrap();
    let order_of = |settings: &complete::Settings| {
        let mut model = open(tmp.path());
        let done = complete::complete(&mut model, &text, cursor, None, settings, None, |_, _| {
            Flow::Continue
        })
        .unwrap();
        let f = model.tokenizer.fim();
        // SPM: <prefix marker><suffix marker> suffix <middle marker> prefix.
        let spm_shape = done.prompt.ids[f.lead.len()..].starts_with(&[f.prefix, f.suffix]);
        assert_eq!(spm_shape, done.prompt.order == FimOrder::Spm);
        done.prompt.order
    };
    let few = complete::Settings {
        limits: Limits {
            max_tokens: 2,
            ..Limits::default()
        },
        ..complete::Settings::default()
    };
    assert_eq!(order_of(&few), FimOrder::Psm, "no preference: PSM");
    config["infill_fim_order"] = "spm".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    assert_eq!(open(tmp.path()).config.fim_order(), FimOrder::Spm);
    assert_eq!(order_of(&few), FimOrder::Spm, "the model's preference");
    let psm = complete::Settings {
        order: Some(FimOrder::Psm),
        ..few.clone()
    };
    assert_eq!(order_of(&psm), FimOrder::Psm, "the caller's choice wins");
    config["infill_fim_order"] = "middle".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let files = infill::model::load::locate_dir(tmp.path()).unwrap();
    let err = infill::model::load::load(&files, &Default::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("infill_fim_order") && msg.contains("\"spm\""),
        "{msg}"
    );
}

/// A prompt marker is never generated, even where the model puts most of its mass on one; the
/// token chosen instead is the best one that can be text, and its probability is the model's.
#[test]
fn prompt_markers_never_reach_the_proposal() {
    let g = golden("qwen2");
    let prompt = &g.ids[..g.prompt_len];
    let limits = Limits {
        max_tokens: 4,
        ..Limits::default()
    };
    let run = |model: &mut infill::model::Model| {
        generate::generate(
            &mut model.network,
            &model.tokenizer,
            prompt,
            &Sampling::default(),
            &limits,
            None,
            |_, _| Flow::Continue,
        )
        .unwrap()
    };
    let mut model = open(&crate::fixture("qwen2"));
    let before = run(&mut model);
    let first = before.tokens[0].id as usize;
    let marker = model.tokenizer.fim().suffix as usize;
    // Untie the output layer and give the marker three times the first token's output row: its
    // logit is three times that (positive) logit, so it becomes the most probable token.
    let tmp = crate::scratch_copy("qwen2");
    let path = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let mut head: Vec<Vec<f32>> = tensors["model.embed_tokens.weight"].to_vec2().unwrap();
    head[marker] = head[first].iter().map(|v| v * 3.0).collect();
    let head = Tensor::new(head, &candle_core::Device::Cpu).unwrap();
    tensors.insert("lm_head.weight".into(), head);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let mut boosted = open(tmp.path());
    let (logits, _) = boosted.network.logits_after(prompt).unwrap();
    let argmax = logits
        .argmax(D::Minus1)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap();
    assert_eq!(
        argmax as usize, marker,
        "the test makes the marker the top token"
    );
    let after = run(&mut boosted);
    assert_eq!(after.tokens[0].id as usize, first);
    assert!(after.tokens[0].prob < before.tokens[0].prob);
    let markers = boosted.tokenizer.fim().markers();
    assert!(after.tokens.iter().all(|t| !markers.contains(&t.id)));
    assert_eq!(after.stop, StopReason::MaxTokens);
}

/// Token healing: the prompt's last token leaves it, the first token generated is the model's best
/// among those that produce that text again, and the text itself is not part of the proposal.
#[test]
fn healing_regenerates_the_last_prompt_token_without_showing_it() {
    let mut model = open(&crate::fixture("qwen2"));
    let g = golden("qwen2");
    let ids = model.tokenizer.encode(&g.prefix).unwrap();
    let (prompt, last) = (&ids[..ids.len() - 1], ids[ids.len() - 1]);
    let heal = model.tokenizer.token_bytes(last).to_vec();
    assert!(!heal.is_empty());
    // The expected first token, worked out by hand: best logit among tokens that fit the text.
    let (logits, _) = model.network.logits_after(prompt).unwrap();
    let row: Vec<f32> = logits.to_vec1().unwrap();
    let fits = |id: usize| {
        let b = model.tokenizer.token_bytes(id as u32);
        !b.is_empty()
            && !model.tokenizer.is_special(id as u32)
            && (b.starts_with(&heal) || heal.starts_with(b))
    };
    let best = (0..row.len())
        .filter(|&i| fits(i))
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap();
    let limits = Limits {
        max_tokens: 3,
        ..Limits::default()
    };
    let request = generate::Request {
        prompt,
        heal: &heal,
        sampling: &Sampling::default(),
        limits: &limits,
        prior: None,
    };
    let out = generate::generate_request(
        &mut model.network,
        &model.tokenizer,
        &request,
        None,
        |_, _| Flow::Continue,
    )
    .unwrap();
    let best_bytes = model.tokenizer.token_bytes(best as u32).to_vec();
    if best_bytes.len() > heal.len() {
        // The first token shows only what follows the healed text.
        assert_eq!(out.tokens[0].id as usize, best);
        assert_eq!(out.tokens[0].bytes, best_bytes[heal.len()..]);
        // Ranked and weighed among the tokens that can write the healed text.
        assert_eq!(out.tokens[0].rank, 1);
    } else {
        // The healed text came back whole as one hidden token; the first shown one follows it.
        assert_eq!(best_bytes, heal);
        let mut after = prompt.to_vec();
        after.push(best as u32);
        let (logits, _) = model.network.logits_after(&after).unwrap();
        let mut row: Vec<f32> = logits.to_vec1().unwrap();
        for m in model.tokenizer.fim().markers() {
            row[m as usize] = f32::NEG_INFINITY;
        }
        let next = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(out.tokens[0].id as usize, next);
    }
    assert!(!out.tokens.is_empty());
    assert!(out.tokens.iter().all(|t| !t.bytes.is_empty()));
    let shown: Vec<u8> = out.tokens.iter().flat_map(|t| t.bytes.clone()).collect();
    assert_eq!(crate::whole_chars(&shown), out.text);

    // complete() heals by default: the prompt is one prefix token shorter and says what it left.
    let text = format!("{}{}", g.prefix, g.suffix);
    let cursor = infill::text::Cursor::from_byte(&text, g.prefix.len()).unwrap();
    let run = |heal: bool, model: &mut infill::model::Model| {
        let settings = complete::Settings {
            heal,
            limits: limits.clone(),
            ..complete::Settings::default()
        };
        complete::complete(model, &text, cursor, None, &settings, None, |_, _| {
            Flow::Continue
        })
        .unwrap()
    };
    let (plain, healed) = (run(false, &mut model), run(true, &mut model));
    assert_eq!(healed.prompt.prefix_tokens + 1, plain.prompt.prefix_tokens);
    assert!(plain.prompt.healed.is_empty());
    assert!(g.prefix.ends_with(&healed.prompt.healed) && !healed.prompt.healed.is_empty());
}

/// Healing never indents the line again: after Enter, with the indentation typed (spaces, a tab,
/// in a CRLF file too), the proposal starts at the cursor's column, not one level deeper. The
/// built-in model proposed `'    return numbers'` here before the healed text was kept out of
/// what it may add.
#[test]
fn healing_keeps_the_typed_indentation() {
    let Some(files) = infill::model::embedded::files() else {
        return;
    };
    let mut model = load::load(&files, &LoadOptions::default()).unwrap();
    let cases = [
        "def count(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n    █\n",
        "def count(numbers):\r\n    total = 0\r\n    for n in numbers:\r\n        total += n\r\n    █\r\n",
        "def count(numbers):\n\ttotal = 0\n\tfor n in numbers:\n\t\ttotal += n\n\t█\n",
        "fn len(v: &[i32]) -> usize {\n    █\n}\n",
    ];
    for case in cases {
        let at = case.find('█').unwrap();
        let text = case.replace('█', "");
        let cursor = infill::text::Cursor::from_byte(&text, at).unwrap();
        let settings = complete::Settings {
            trim: false,
            limits: Limits {
                max_tokens: 8,
                ..Limits::default()
            },
            ..complete::Settings::default()
        };
        let c = complete::complete(&mut model, &text, cursor, None, &settings, None, |_, _| {
            Flow::Continue
        })
        .unwrap();
        assert!(
            c.prompt.healed.ends_with([' ', '\t']),
            "{case:?}: the test heals indentation ({:?})",
            c.prompt.healed
        );
        assert!(
            !c.generation.text.starts_with([' ', '\t']),
            "{case:?}: proposal {:?} indents again",
            c.generation.text
        );
    }
}

/// A keystroke in a PSM prompt: the suffix's keys and values are reused out of place (rotated to
/// their new positions), only the changed tokens and the last one are computed, and an idle
/// refresh makes the cache exactly what a fresh run computes.
#[test]
fn a_keystroke_reuses_the_suffix_out_of_place_and_a_refresh_makes_it_exact() {
    use infill::model::FimOrder;
    for name in ["qwen2", "llama"] {
        let mut warm = open(&crate::fixture(name));
        let tok = &warm.tokenizer;
        let prefix = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fib";
        let suffix = "\n\n\nprint(fibonacci(10))\nprint(fibonacci(20))\nfor i in range(3):\n    print(i * i)\n";
        let prompt = |p: &str| {
            let pre = tok.encode(p).unwrap();
            let suf = tok.encode_continuation(suffix).unwrap();
            tok.fim_prompt(&pre, &suf, FimOrder::Psm)
        };
        let (before, after) = (prompt(prefix), prompt(&format!("{prefix}o")));
        let suffix_tokens = tok.encode_continuation(suffix).unwrap().len();
        assert!(suffix_tokens >= 20, "{name}: {suffix_tokens}");
        warm.network.logits_after(&before).unwrap();
        let (shifted, prefill) = warm.network.logits_after(&after).unwrap();
        assert!(prefill.shifted > suffix_tokens, "{name}: {prefill:?}");
        assert!(prefill.computed <= 4, "{name}: {prefill:?}");
        assert!(warm.network.needs_refresh());

        let mut fresh = open(&crate::fixture(name));
        let (exact, _) = fresh.network.logits_after(&after).unwrap();
        // Approximate: the suffix was computed after the old prefix (these tiny random models
        // amplify that; a real model's cost is measured by `infill eval --typed`).
        assert!(
            shifted
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|x| x.is_finite())
        );

        while warm.network.needs_refresh() {
            warm.network.refresh_step(7).unwrap();
        }
        let (refreshed, again) = warm.network.logits_after(&after).unwrap();
        assert_eq!((again.computed, again.shifted), (1, 0), "{name}");
        let gap = max_abs_diff(&refreshed, &exact);
        assert!(gap < 1e-4, "{name}: refreshed {gap}");

        // A window that moved on by a line keeps the rest of its prefix, out of place too.
        let moved = prompt(prefix.split_once('\n').unwrap().1);
        let (_, prefill) = warm.network.logits_after(&moved).unwrap();
        assert!(prefill.shifted > suffix_tokens + 10, "{name}: {prefill:?}");

        // Off, the same keystroke recomputes the suffix exactly.
        let mut off = open(&crate::fixture(name));
        off.network.set_shift_reuse(false);
        off.network.logits_after(&before).unwrap();
        let (logits, prefill) = off.network.logits_after(&after).unwrap();
        assert_eq!(prefill.shifted, 0);
        assert!(max_abs_diff(&logits, &exact) < 1e-4, "{name}: exact path");
    }
}
