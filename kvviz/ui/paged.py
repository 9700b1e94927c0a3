"""Widgets of the Paged cache page: the scenario buttons, the custom run form, running a paged run
once per choice, and the step player."""

from __future__ import annotations

import time
from dataclasses import asdict

import streamlit as st

from kvviz.model.loading import LoadedModel
from kvviz.paged.block_manager import PoolTooSmall
from kvviz.paged.result import PagedRun
from kvviz.paged.run import FORM_LIMITS as LIMITS
from kvviz.paged.run import PagedSettings, run_paged
from kvviz.paged.scenarios import BY_KEY, SCENARIOS, Scenario
from kvviz.policies import PolicyError
from kvviz.policies.spec import PolicySpec
from kvviz.record.text import PromptError
from kvviz.ui.policy_controls import policy_controls
from kvviz.ui.token_html import md_escape

CHOICE, CUSTOM, RUN, STEP, PLAYING = "paged.choice", "paged.custom", "paged.run", "paged.step", "paged.playing"
DEFAULT_PROMPTS = "The capital of France is\nThe capital of France is a city where\nWater boils at a temperature of"
PLAY_DELAY_S = 0.8


def scenario_buttons() -> None:
    """One button per built-in scenario; a click chooses it (the run follows)."""
    for col, sc in zip(st.columns(len(SCENARIOS)), SCENARIOS):
        if col.button(sc.button, key=f"paged.scenario.{sc.key}", help=sc.title, width="stretch"):
            st.session_state[CHOICE] = sc.key


def custom_form() -> None:
    """Prompts and settings of a custom run; Run chooses it."""
    with st.expander("Custom prompts and settings", expanded=st.session_state.get(CHOICE) == "custom"):
        text = st.text_area("Prompts, one per line", DEFAULT_PROMPTS, key="paged.prompts", height=110)
        c = st.columns(5)
        block_size = c[0].number_input("Block size", *LIMITS["block_size"], key="paged.block_size", help="Token slots per block (vLLM's default: 16).")
        num_blocks = c[1].number_input("Blocks in the pool", *LIMITS["num_blocks"], key="paged.num_blocks")
        n = c[2].number_input("Samples per prompt (n)", *LIMITS["n"], key="paged.n", help="n > 1 shares the prompt's blocks: copy-on-write.")
        max_new = c[3].number_input("New tokens", *LIMITS["max_new_tokens"], key="paged.max_new_tokens")
        seed = c[4].number_input("Seed", *LIMITS["seed"], key="paged.seed")
        c = st.columns(4)
        sample = c[0].checkbox("Sample", n > 1, key="paged.sample", help="Each request and sample draws with its own seed.")
        chat = c[1].checkbox("Chat template", False, key="paged.chat")
        prefix = c[2].checkbox("Prefix caching", True, key="paged.prefix_caching")
        eviction = c[3].radio(
            "Eviction", ["token", "block"], key="paged.eviction", horizontal=True,
            help="With an eviction policy. token: entry by entry, leaving holes (a block is freed only when no layer or "
            "head reads it). block: whole blocks go, ranked by the share of their entries the policy would keep.",
        )
        spec = policy_controls(key="paged", default="full")
        if st.button("Run", key="paged.custom_run", type="primary"):
            if spec is None:
                st.error("Fix the policy settings first.")
                return
            st.session_state[CUSTOM] = Scenario(
                "custom", "Run", "Custom prompts", "Your prompts, decoded together from the pool.",
                tuple(p for p in text.splitlines() if p.strip()), int(block_size), int(num_blocks), int(max_new),
                n=int(n), sample=bool(sample), chat=bool(chat), policy=spec.to_text() if spec.takes_budget else None,
                eviction=eviction, seed=int(seed),
            )
            st.session_state["paged.custom_prefix"] = bool(prefix)
            st.session_state[CHOICE] = "custom"


def chosen() -> Scenario | None:
    ss = st.session_state
    key = ss.get(CHOICE)
    return ss.get(CUSTOM) if key == "custom" else BY_KEY.get(key)


def run(loaded: LoadedModel, sc: Scenario) -> PagedRun | None:
    """The paged run of scenario ``sc`` (computed once per scenario and model); None with the
    reason shown when the input cannot run."""
    ss = st.session_state
    prefix = ss.get("paged.custom_prefix", True) if sc.key == "custom" else True
    key = (asdict(sc), prefix, loaded.summary.name, loaded.summary.device, loaded.summary.dtype)
    cached = ss.get(RUN)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        policy = PolicySpec.parse(sc.policy) if sc.policy else None
        settings = PagedSettings(
            block_size=sc.block_size, num_blocks=sc.num_blocks, n=sc.n, max_new_tokens=sc.max_new_tokens,
            sample=sc.sample, seed=sc.seed, chat=sc.chat, policy=policy, eviction=sc.eviction, prefix_caching=prefix,
        )
        with st.spinner(f"Decoding {len(sc.prompts)} prompt(s) from the paged pool on {loaded.summary.device}..."):
            result = run_paged(loaded.model, loaded.tokenizer, list(sc.prompts), settings, model_name=loaded.summary.name)
    except (PoolTooSmall, PromptError, PolicyError, ValueError) as exc:
        st.error(md_escape(str(exc)), icon=":material/error:")
        return None
    ss[RUN], ss[STEP], ss[PLAYING] = (key, result), min(1, len(result.frames) - 1), False
    return result


def _toggle_play(last: int) -> None:
    ss = st.session_state
    ss[PLAYING] = not ss.get(PLAYING, False)
    if ss[PLAYING] and ss.get(STEP, 0) >= last:
        ss[STEP] = 0


def step_player(n_frames: int) -> int:
    """A step slider and a Play button that walks it through the run's steps."""
    ss, last = st.session_state, n_frames - 1
    if ss.get(STEP) is None or ss[STEP] > last:
        ss[STEP] = min(1, last)
    if ss.get(PLAYING):
        ss[STEP] = min(ss[STEP] + 1, last)
        ss[PLAYING] = ss[STEP] < last
    left, right = st.columns([8, 1], vertical_alignment="bottom")
    step = left.slider("Step", 0, last, key=STEP, help="0: before anything; each step is one forward of the batch; the last: after every request finished.")
    right.button("⏸ Pause" if ss.get(PLAYING) else "▶ Play", key="paged.play", on_click=_toggle_play, args=(last,), width="stretch")
    return step


def keep_playing() -> None:
    """At the end of the page: show the next step after a pause while playing."""
    if st.session_state.get(PLAYING):
        time.sleep(PLAY_DELAY_S)
        st.rerun()
