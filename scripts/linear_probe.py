"""How much the frozen model already knows at the probe position: a logistic fit on its final
hidden state there, a ceiling for what training the token can reach cheaply.

For every row of a capability dataset (prompt, response or its prefix, probe turn) the frozen
base model's final-normed hidden state at the probe position is read (the token's own input:
its score is a linear function of it through two LM-head rows); a logistic regression on the
standardized states is fitted on the train split, against the verifier's reward ("reward") and
against the capability targets ("capability"), and scored on the validation split: AUROC pooled
and within a prompt, on complete responses and on the copies truncated at 8 tokens.

    python scripts/linear_probe.py --model ~/.cache/jaxselfeval/models/smollm2 \
        --data runs/demo_smollm2/data
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize as so
from flax import nnx

import jaxselfeval as jse
from jaxselfeval.sample.probe import no_share, probe_spec
from jaxselfeval.selfeval import metrics as M
from jaxselfeval.selfeval.dataset import load_rows
from jaxselfeval.selfeval.rows import encode_shared, hidden_rows, prompt_batches
from jaxselfeval.tokenizer import load_tokenizer


def features(model, spec, rows, seq_len: int) -> dict:
    """Hidden states f32 [N, D] at the probe position and the untrained score [N]."""
    g, st = nnx.split(model)
    ids = jnp.asarray([spec.yes, spec.no], jnp.int32)

    @jax.jit
    def at_probe(st, b):
        m = nnx.merge(g, st)
        h = hidden_rows(m, b)
        h = h[jnp.arange(h.shape[0]), b["last"]]
        return h, no_share(m, h, ids)

    d = encode_shared(rows, spec.after, seq_len)
    keep = d["keep"]
    H = np.zeros((len(d["tokens"]), model.config.hidden_size), np.float32)
    S = np.zeros(len(d["tokens"]), np.float32)
    for idx, b in prompt_batches(d, 128):
        h, s = (np.asarray(x) for x in at_probe(st, b))
        H[idx[idx >= 0]], S[idx[idx >= 0]] = h[idx >= 0], s[idx >= 0]
    meta = {k: np.asarray([rows[i][k] for i in keep]) for k in ("reward", "target", "truncation",
                                                              "example")}
    return {"H": H, "S": S, **meta}


def fit_logistic(X, y, lam: float) -> np.ndarray:
    """L2-regularized logistic regression on soft targets y in [0, 1]: weights [D + 1]."""
    n, d = X.shape

    def f(w):
        p = 1 / (1 + np.exp(-(X @ w[:-1] + w[-1])))
        loss = -(y * np.log(p + 1e-9) + (1 - y) * np.log(1 - p + 1e-9)).mean()
        grad = np.append(X.T @ (p - y) / n + 2 * lam * w[:-1], (p - y).mean())
        return loss + lam * (w[:-1] ** 2).sum(), grad

    return so.minimize(f, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                       options={"maxiter": 500}).x


def line(name: str, s, d) -> str:
    out = [name]
    for label, m in (("complete", d["truncation"] == 0), ("at 8 tokens", d["truncation"] == 8)):
        c = d["reward"][m]
        out.append(f"{label}: pooled {M.auroc(s[m], c > 0.5):.3f}, within "
                   f"{M.auroc_within(s[m], c, d['example'][m]):.3f}")
    return " | ".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the policy the data was sampled from")
    ap.add_argument("--data", required=True, help="a capability dataset (jaxselfeval data build)")
    ap.add_argument("--seq-len", type=int, default=320)
    args = ap.parse_args()
    tok = load_tokenizer(args.model)
    spec = probe_spec(tok)
    model = jse.load_pretrained(args.model, compute_dtype="float32")
    tr, va = (features(model, spec, load_rows(args.data, s), args.seq_len)
              for s in ("train", "validation"))
    mu, sd = tr["H"].mean(0), tr["H"].std(0) + 1e-6
    X, Xv = (tr["H"] - mu) / sd, (va["H"] - mu) / sd
    print(line("the untrained token", va["S"], va))
    for target in ("reward", "capability"):
        y = tr["reward" if target == "reward" else "target"]
        for lam in (1e-3, 1e-2, 1e-1):
            w = fit_logistic(X, y, lam)
            print(line(f"linear, {target} target, L2 {lam}", Xv @ w[:-1] + w[-1], va))


if __name__ == "__main__":
    main()
