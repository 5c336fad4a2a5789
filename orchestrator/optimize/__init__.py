"""`hillclimb optimize`: non-parametric learning. The model's weights stay frozen; a skill
document (Markdown in the agent's system message) is edited, and an edit is kept only when it
strictly improves a validation score that no proposal ever saw.

    suite ─► uses.split_uses ─► train tasks (scored, failures mined) │ validation (decides) │ test (report only)
    each iteration k:
        incumbent skill on train batch k ─► scored episodes ─► proposer ─► candidate skill
        candidate checked (text, not empty, under the cap, changed) ─► on train batch k (no worse?)
                  ─► on validation, paired with the incumbent ─► acceptance rule ─► history.jsonl
    after the last iteration: initial and best skill on the test split ─► report.json, plots

Every evaluation is ledgered per skill (scoring.Scorer), so a rerun after Ctrl-C or a crash
pays for nothing it finished. The test split reaches the scorer only through `final.report_on_test`,
which runs after selection has ended; the scorer refuses test tasks before then.
"""
