from __future__ import annotations

import copy

import torch
from geoopt.optim import RiemannianAdam
from lightning.pytorch import LightningModule, Trainer
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import optim
from lightning_modules.optim import JointOptimizer, warmup_cosine


def _two_optimisers():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    joint = JointOptimizer([torch.optim.AdamW(a.parameters(), lr=1e-2), RiemannianAdam(b.parameters(), lr=1e-1)])
    return a, b, joint


def test_joint_optimizer_steps_both_like_separate_optimisers():
    a, b, joint = _two_optimisers()
    a2, b2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    a2.load_state_dict(a.state_dict()), b2.load_state_dict(b.state_dict())
    sep = [torch.optim.AdamW(a2.parameters(), lr=1e-2), RiemannianAdam(b2.parameters(), lr=1e-1)]
    x = torch.randn(8, 4)
    for _ in range(3):
        joint.zero_grad()
        joint.step(lambda: b(a(x)).pow(2).mean().backward())
        for o in sep:
            o.zero_grad()
        b2(a2(x)).pow(2).mean().backward()
        for o in sep:
            o.step()
    for p, q in zip([*a.parameters(), *b.parameters()], [*a2.parameters(), *b2.parameters()]):
        torch.testing.assert_close(p, q)
    assert len(joint.state) == 4 and len(joint.param_groups) == 2


def test_joint_optimizer_state_dict_round_trip_and_scheduler_per_group():
    a, b, joint = _two_optimisers()
    sched = LambdaLR(joint, lr_lambda=[lambda s: 0.5, lambda s: 1.0])
    x = torch.randn(8, 4)
    joint.step(lambda: b(a(x)).sum().backward())
    sched.step()
    assert [g["lr"] for g in joint.param_groups] == [5e-3, 1e-1]
    saved = joint.state_dict()
    _, _, fresh = _two_optimisers()
    fresh.load_state_dict(saved)
    for o_old, o_new in zip(joint.optimizers, fresh.optimizers):
        for s_old, s_new in zip(o_old.state.values(), o_new.state.values()):
            torch.testing.assert_close(s_old["exp_avg"], s_new["exp_avg"])


def test_warmup_cosine_shape():
    f = warmup_cosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and abs(f(14) - 0.1) < 1e-9 and abs(f(9) - 0.55) < 1e-9


class _TwoOptModule(LightningModule):
    def __init__(self):
        super().__init__()
        self.euclid, self.hyp = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        return self.hyp(self.euclid(batch[0])).pow(2).mean()

    def configure_optimizers(self):
        return JointOptimizer([torch.optim.AdamW(self.euclid.parameters(), lr=1e-2),
                               RiemannianAdam(self.hyp.parameters(), lr=1e-2)])


def test_lightning_accumulates_clips_and_checkpoints_both(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=2)
    model = _TwoOptModule()
    trainer = Trainer(max_epochs=1, accumulate_grad_batches=8, gradient_clip_val=1.0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert trainer.global_step == 2  # 16 micro-batches / 8
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=False)
    inner = ckpt["optimizer_states"][0]["optimizers"]
    assert len(inner) == 2 and all(s["state"] for s in inner)
    assert inner[0]["state"][0]["step"] == 2  # one AdamW step per optimizer step, not per micro-batch


def _branch_like_parameters(seed: int) -> list[torch.nn.Parameter]:
    """A matrix with weight decay, a bias and 0-d logits, as Geo-Sign's branch holds them."""
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(6, 5, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g)),
            torch.nn.Parameter(torch.tensor(0.4))]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    return [{"params": params[:1], "weight_decay": 0.01}, {"params": params[1:], "weight_decay": 0.0}]


def test_fused_adam_is_riemannian_adam_on_euclidean_parameters_and_resumes_its_state():
    """Geo-Sign's branch trains with torch's fused Adam (`optim.adam`) in place of geoopt's RiemannianAdam (Table 3):
    on Euclidean parameters the two take the same steps, and a RiemannianAdam state (an older
    checkpoint's) continues in Adam."""
    ours, theirs = _branch_like_parameters(0), _branch_like_parameters(0)
    adam = optim.adam(_groups(ours), lr=1e-2)
    radam = RiemannianAdam(_groups(theirs), lr=1e-2)
    g = torch.Generator().manual_seed(1)

    def step_both(first: torch.optim.Optimizer, second: torch.optim.Optimizer) -> None:
        for p, q in zip(ours, theirs):
            grad = torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad.clone(), grad.clone()
        first.step(), second.step()

    for _ in range(100):
        step_both(adam, radam)
    moved = max((p - q0).abs().max() for p, q0 in zip(ours, _branch_like_parameters(0)))
    assert moved > 0.1  # the steps did move the parameters
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    resumed = optim.adam(_groups(ours), lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(radam.state_dict()))
    for _ in range(20):
        step_both(resumed, radam)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
