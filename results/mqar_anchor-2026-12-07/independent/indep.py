"""Independent plain-JAX 2-layer transformer on aed_jax.tasks.make_batch mqar batches."""
import os, sys, time, math, argparse
import numpy as np, jax, jax.numpy as jnp, optax
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); sys.path.insert(0, ".")
from common import cfg, tasks

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=3e-3); p.add_argument("--wd", type=float, default=0.0)
p.add_argument("--steps", type=int, default=2000); p.add_argument("--B", type=int, default=64)
p.add_argument("--D", type=int, default=64); p.add_argument("--H", type=int, default=1)
p.add_argument("--L", type=int, default=2); p.add_argument("--T", type=int, default=16); p.add_argument("--N", type=int, default=4)
p.add_argument("--init", type=float, default=0.02); p.add_argument("--mlp", type=int, default=1)
p.add_argument("--b2", type=float, default=0.95); p.add_argument("--seed", type=int, default=0)
p.add_argument("--tied", type=int, default=1); p.add_argument("--sched", default="cos")
a = p.parse_args()
c = cfg(T=a.T, N=a.N)
V, T, D, H, L = 32, a.T, a.D, a.H, a.L

def init(key):
    ks = iter(jax.random.split(key, 100))
    n = lambda *s, std=a.init: std * jax.random.normal(next(ks), s)
    P = {"tok": n(V, D), "pos": n(T, D), "lnf": jnp.ones(D), "layers": []}
    if not a.tied: P["out"] = n(V, D)
    for _ in range(L):
        P["layers"].append({"ln1": jnp.ones(D), "qkv": n(D, 3 * D), "o": n(D, D, std=a.init / math.sqrt(2 * L)),
                            "ln2": jnp.ones(D), "w1": n(D, 4 * D), "w2": n(4 * D, D, std=a.init / math.sqrt(2 * L))})
    return P

def ln(x, g):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / jnp.sqrt(v + 1e-5) * g

def fwd(P, x):
    h = P["tok"][x] + P["pos"][None]
    mask = jnp.tril(jnp.ones((T, T), bool))
    for l in P["layers"]:
        q, k, v = jnp.split(ln(h, l["ln1"]) @ l["qkv"], 3, -1)
        sh = lambda z: z.reshape(z.shape[0], T, H, D // H)
        q, k, v = sh(q), sh(k), sh(v)
        s = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D // H)
        s = jnp.where(mask, s, -jnp.inf)
        o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, -1), v).reshape(-1, T, D)
        h = h + o @ l["o"]
        if a.mlp:
            h = h + jax.nn.gelu(ln(h, l["ln2"]) @ l["w1"], approximate=False) @ l["w2"]
    return ln(h, P["lnf"]) @ (P["tok"] if a.tied else P["out"]).T

def loss_fn(P, b):
    ce = optax.softmax_cross_entropy_with_integer_labels(fwd(P, b["x"]), b["y"])
    return (ce * b["weight"]).sum() / b["weight"].sum()

if a.sched == "cos":
    sched = optax.join_schedules([optax.linear_schedule(0, a.lr, 100),
                                  optax.cosine_decay_schedule(a.lr, a.steps - 100, alpha=1e-4 / a.lr)], [100])
else:
    sched = a.lr
mask = lambda P: jax.tree_util.tree_map(lambda p: p.ndim >= 2, P)
opt = optax.adamw(sched, b1=0.9, b2=a.b2, eps=1e-8, weight_decay=a.wd, mask=mask)
P = init(jax.random.key(a.seed)); S = opt.init(P)

@jax.jit
def step(P, S, b):
    l, g = jax.value_and_grad(loss_fn)(P, b)
    u, S = opt.update(g, S, P)
    return optax.apply_updates(P, u), S, l

@jax.jit
def acc(P, b):
    lg = fwd(P, b["x"])
    return ((lg.argmax(-1) == b["y"]) * b["weight"]).sum() / b["weight"].sum()

val = tasks.make_batch(c, np.random.default_rng(999), 512)
t0 = time.time()
for i in range(a.steps):
    b = tasks.make_batch(c, np.random.default_rng((1, i)), a.B)
    P, S, l = step(P, S, b)
    if (i + 1) % 250 == 0:
        print(f"step {i+1} loss {float(l):.3f} val_acc {float(acc(P, val)):.3f} t={time.time()-t0:.0f}s", flush=True)
print("args", vars(a))
