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
from kvviz.ui import stale
from kvviz.ui.clicks import selected_steps
from kvviz.ui.job_view import page_work
from kvviz.ui.policy_controls import policy_controls
from kvviz.ui.state import from_url, persisted, to_url, within
from kvviz.ui.token_html import md_escape
from kvviz.i18n import N_, _, ngettext

CHOICE, CUSTOM, RUN, STEP, PLAYING = "paged.choice", "paged.custom", "paged.run", "paged.step", "paged.playing"
FROM_LINK = "paged.custom_from_link"  # a link chose the custom run: build it from the form's (linked) values
FORM = "paged.form"  # (the custom form's scenario, prefix caching) as its fields say now; None when they do not build
BUDGET = "paged.budget"  # the 'requests that fit' slider
DEFAULT_PROMPTS = "The capital of France is\nThe capital of France is a city where\nWater boils at a temperature of"
PLAY_DELAY_S = 0.8
EVICTIONS = {"token": N_("token"), "block": N_("block")}  # the eviction radio's values -> what it shows


def eviction_label(eviction: str) -> str:
    return _(EVICTIONS[eviction]) if eviction in EVICTIONS else eviction


def scenario_buttons() -> None:
    """One button per built-in scenario; a click chooses it (the run follows). A link's
    ``scenario`` chooses one the first time this session meets it."""
    found, key = from_url("scenario", "", options=[sc.key for sc in SCENARIOS] + ["custom"],
                          instead=lambda: st.session_state.get(CHOICE) or _("no scenario (press one)"))
    if found:
        st.session_state[CHOICE] = key
        st.session_state[FROM_LINK] = key == "custom"  # the form's values (from the link) make the run
    for col, sc in zip(st.columns(len(SCENARIOS)), SCENARIOS):
        if col.button(_(sc.button), key=f"paged.scenario.{sc.key}", help=_(sc.title), width="stretch"):
            st.session_state[CHOICE] = sc.key


def custom_form() -> None:
    """Prompts and settings of a custom run; Run chooses it."""
    with st.expander(_("Custom prompts and settings"), expanded=st.session_state.get(CHOICE) == "custom"):
        text = persisted(st.text_area, "paged.prompts", DEFAULT_PROMPTS, url="prompts", label=_("Prompts, one per line"), height=110)
        c = st.columns(5)

        def number(col, key: str, url: str, label: str, **kw) -> int:
            lo, hi, default = LIMITS[key]
            with col:
                return int(persisted(st.number_input, f"paged.{key}", default, url=url, label=_(label), min_value=lo, max_value=hi, **kw))

        block_size = number(c[0], "block_size", "block", N_("Block size"), help=_("Token slots per block (vLLM's default: 16)."))
        num_blocks = number(c[1], "num_blocks", "blocks", N_("Blocks in the pool"))
        n = number(c[2], "n", "n", N_("Samples per prompt (n)"), help=_("n > 1 shares the prompt's blocks: copy-on-write."))
        max_new = number(c[3], "max_new_tokens", "new", N_("New tokens"))
        seed = number(c[4], "seed", "seed", N_("Seed"))
        c = st.columns(4)
        with c[0]:
            sample = persisted(st.checkbox, "paged.sample", False, url="sample", label=_("Sample"), help=_("Each request and sample draws with its own seed."))
        with c[1]:
            chat = persisted(st.checkbox, "paged.chat", False, url="chat_template", label=_("Chat template"))
        with c[2]:
            prefix = persisted(st.checkbox, "paged.prefix_caching", True, url="prefix", label=_("Prefix caching"))
        with c[3]:
            eviction = persisted(
                st.radio, "paged.eviction", "token", url="eviction", label=_("Eviction"), options=["token", "block"], horizontal=True, format_func=eviction_label,
                help=_("With an eviction policy. token: entry by entry, leaving holes (a block is freed only when no layer or "
                       "head reads it). block: whole blocks go, ranked by the share of their entries the policy would keep."),
            )
        spec = policy_controls(key="paged", default="full", url="policy")
        form = None if spec is None else Scenario(
            "custom", N_("Run"), N_("Custom prompts"), N_("Your prompts, decoded together from the pool."),
            tuple(p for p in text.splitlines() if p.strip()), block_size, num_blocks, max_new,
            n=n, sample=bool(sample), chat=bool(chat), policy=spec.to_text() if spec.takes_budget else None,
            eviction=eviction, seed=seed,
        )
        st.session_state[FORM] = None if form is None else (form, bool(prefix))  # what Run would run now
        ran = st.button(_("Run"), key="paged.custom_run", type="primary")
        if ran or st.session_state.pop(FROM_LINK, False):
            if form is None:
                st.error(_("Fix the policy settings first."))
                return
            st.session_state[CUSTOM] = form
            st.session_state["paged.custom_prefix"] = bool(prefix)
            st.session_state[CHOICE] = "custom"


_NUMBERS = (("block_size", N_("Block size")), ("num_blocks", N_("Blocks in the pool")), ("n", N_("Samples per prompt (n)")),
            ("max_new_tokens", N_("New tokens")), ("seed", N_("Seed")))  # the form's labels
_SWITCHES = (("sample", N_("Sample")), ("chat", N_("Chat template")))


def changed_settings(ran: Scenario, ran_prefix: bool, now: Scenario, now_prefix: bool) -> list[str]:
    """What the custom form says now that the custom run on screen did not, named as the form names it."""
    changed = []
    if now.prompts != ran.prompts:
        changed.append(ngettext("the prompts are **{n} other line**", "the prompts are **{n} other lines**", len(now.prompts)).format(n=len(now.prompts)))
    for field, label in _NUMBERS:
        changed += stale.count_change(_(label), getattr(ran, field), getattr(now, field))
    for field, label in _SWITCHES:
        changed += stale.switch_change(_(label), getattr(ran, field), getattr(now, field))
    changed += stale.switch_change(_("Prefix caching"), ran_prefix, now_prefix)
    if now.eviction != ran.eviction:
        changed.append(_("Eviction is **{eviction}**").format(eviction=eviction_label(now.eviction)))
    if now.policy != ran.policy:
        changed.append(_("the policy is **{policy}**").format(policy=md_escape(PolicySpec.parse(now.policy).label() if now.policy else "full")))
    return changed


def stale_mark(sc: Scenario) -> None:
    """Marks the custom run on screen when the form's fields no longer say it (a scenario button
    sets the settings of the run it starts: never stale)."""
    ss, form = st.session_state, st.session_state.get(FORM)
    if sc.key == "custom" and form is not None:
        stale.warn(changed_settings(sc, ss.get("paged.custom_prefix", True), *form))


def chosen() -> Scenario | None:
    """The scenario to show (written into the page's link as ``scenario``)."""
    ss = st.session_state
    key = ss.get(CHOICE)
    sc = ss.get(CUSTOM) if key == "custom" else BY_KEY.get(key)
    to_url("scenario", key if sc is not None else "", "")
    return sc


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
        with st.spinner(ngettext("Decoding {n} prompt from the paged pool on {device}...", "Decoding {n} prompts from the paged pool on {device}...",
                                  len(sc.prompts)).format(n=len(sc.prompts), device=loaded.summary.device)), page_work(_("The paged run")):
            result = run_paged(loaded.model, loaded.tokenizer, list(sc.prompts), settings, model_name=loaded.summary.name)
    except (PoolTooSmall, PromptError, PolicyError, ValueError) as exc:
        st.error(md_escape(str(exc)), icon=":material/error:")
        return None
    ss[RUN], ss[STEP], ss[PLAYING] = (key, result), min(1, len(result.frames) - 1), False
    ss.pop(BUDGET, None)  # a new run's memory budget starts at its own pool's size
    return result


def _toggle_play(last: int) -> None:
    ss = st.session_state
    ss[PLAYING] = not ss.get(PLAYING, False)
    if ss[PLAYING] and ss.get(STEP, 0) >= last:
        ss[STEP] = 0


def step_player(n_frames: int, chart_key: str | None = None) -> int:
    """A step slider and a Play button that walks it through the run's steps; a click (or a box:
    its first step) on the chart with key ``chart_key``, whose x axis is the step, moves it there."""
    ss, last = st.session_state, n_frames - 1
    if ss.get(STEP) is None or ss[STEP] > last:
        ss[STEP] = min(1, last)
    found, linked = from_url("step", 0, check=within(0, last), instead=lambda: ss[STEP])
    if found:
        ss[STEP] = linked
    picked = selected_steps(chart_key) if chart_key else None
    if picked is not None:
        ss[STEP], ss[PLAYING] = min(picked[0], last), False
    if ss.get(PLAYING):
        ss[STEP] = min(ss[STEP] + 1, last)
        ss[PLAYING] = ss[STEP] < last
    left, right = st.columns([8, 1], vertical_alignment="bottom")
    step = left.slider(_("Step"), 0, last, key=STEP,
                       help=_("0: before anything; each step is one forward of the batch; the last: after every request finished."))
    right.button(_("⏸ Pause") if ss.get(PLAYING) else _("▶ Play"), key="paged.play", on_click=_toggle_play, args=(last,), width="stretch")
    to_url("step", step, min(1, last))
    return step


def keep_playing() -> None:
    """At the end of the page: show the next step after a pause while playing."""
    if st.session_state.get(PLAYING):
        time.sleep(PLAY_DELAY_S)
        st.rerun()
