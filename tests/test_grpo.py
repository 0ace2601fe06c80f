"""grpo.py pinned by numbers computed by hand (shown in the comments)."""
import math

import pytest
import torch

from grpo import aggregate, clipped_policy_loss, group_advantages, grpo_token_loss, kl_k3


def test_group_advantages_std_scaled_and_dr_grpo():
    r = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1])
    # group 1: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.577350; 0.5 / (0.577350 + 1e-6)
    a = group_advantages(r, group_size=4)
    expect = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(a, torch.tensor([expect, -expect, -expect, expect, 0, 0, 0, 0]))
    torch.testing.assert_close(group_advantages(r, 4, scale=False),
                               torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    # rewards 3, 1: mean 2, unbiased std sqrt(2) -> +-1/sqrt(2)
    torch.testing.assert_close(group_advantages(torch.tensor([3.0, 1.0]), 2, eps=0.0),
                               torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2)]))
    # eps is added to the std, not under the square root: rewards 1, 0 have std 1/sqrt(2), and
    # with eps 0.5 that gives 0.5 / (0.7071 + 0.5) = 0.4142 (0.5 / sqrt(0.5 + 0.5) = 0.5 would be wrong)
    a = 0.5 / (1 / math.sqrt(2) + 0.5)
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0]), 2, eps=0.5), torch.tensor([a, -a]))
    assert group_advantages(torch.tensor([1.0, 0.0]), 1).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="7 rewards do not split into groups of 4"):
        group_advantages(torch.ones(7), 4)


def test_clipped_policy_loss_cases():
    old = torch.zeros(5)
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.25])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    loss, clipped = clipped_policy_loss(torch.log(ratio), old, adv, clip_low=0.2, clip_high=0.28)
    # 1.5*+1: min(1.5, 1.28) -> -1.28 clipped | 1.5*-1: min(-1.5, -1.28) -> 1.5
    # 0.5*+1: min(0.5, 0.8) -> -0.5           | 0.5*-1: min(-0.5, -0.8) -> 0.8 clipped
    # 1.25*+1 under clip-high 0.28: not clipped -> -1.25
    torch.testing.assert_close(loss, torch.tensor([-1.28, 1.5, -0.5, 0.8, -1.25]))
    assert clipped.tolist() == [True, False, False, True, False]


def test_policy_gradient_at_ratio_one_is_minus_advantage():
    logp = torch.zeros(3, requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 0.5])
    loss, _ = clipped_policy_loss(logp, torch.zeros(3), adv)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, -adv)


def test_kl_k3():
    # d = ln(0.25) - ln(0.5) = -ln 2; k3 = 0.5 + ln 2 - 1 = 0.193147
    v = kl_k3(torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3])))
    torch.testing.assert_close(v, torch.tensor([0.5 + math.log(2) - 1, 0.0]))
    assert kl_k3(torch.tensor([0.0]), torch.tensor([-5.0])).item() == pytest.approx(math.exp(-5) + 4)
    assert kl_k3(torch.tensor([0.0]), torch.tensor([-100.0])).item() == 10.0   # 19 before the cap
    assert kl_k3(torch.tensor([-100.0]), torch.tensor([0.0])).item() == 10.0   # exp(20) - 21 capped


def test_aggregations_and_micro_batch_additivity():
    v = torch.tensor([1.0, 2, 3, 4, 5])
    idx = torch.tensor([0, 0, 1, 1, 1])
    lens = torch.tensor([2, 3])
    assert aggregate(v, idx, lens, "token-mean").item() == 3.0                       # 15 / 5
    assert aggregate(v, idx, lens, "seq-mean-token-mean").item() == 2.75             # (3/2 + 12/3) / 2
    assert aggregate(v, idx, lens, "seq-mean-token-sum-norm", max_tokens=10).item() == 0.75  # 15 / 20
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        whole = aggregate(v, idx, lens, mode, max_tokens=10)
        parts = aggregate(v[:3], idx[:3], lens, mode, 10) + aggregate(v[3:], idx[3:], lens, mode, 10)
        torch.testing.assert_close(parts, whole)
    # Under DDP each rank passes its own sequences and the all-ranks totals.
    assert aggregate(v[:2], idx[:2], lens[:1], "token-mean", batch_tokens=5).item() == pytest.approx(0.6)  # 3 / 5
    assert aggregate(v[:2], idx[:2], lens[:1], "seq-mean-token-mean", batch_seqs=2).item() == 0.75  # (3/2) / 2
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        aggregate(v, idx, lens, "mean")
    with pytest.raises(ValueError, match="needs max_tokens"):
        aggregate(v, idx, lens, "seq-mean-token-sum-norm")


def test_full_token_loss():
    logp = torch.log(torch.tensor([0.5]))
    loss, parts = grpo_token_loss(logp, logp, torch.log(torch.tensor([0.25])), torch.tensor([2.0]),
                                  torch.tensor([1.0]), kl_coef=0.1, entropy_coef=0.01)
    # pg = -1 (ratio 1, A 1); kl = 0.193147; loss = -1 + 0.1 * 0.193147 - 0.01 * 2
    torch.testing.assert_close(loss, torch.tensor([-1 + 0.1 * (0.5 + math.log(2) - 1) - 0.02]))
    assert set(parts) == {"pg", "clipped", "kl", "entropy"}
    loss, parts = grpo_token_loss(logp, logp, None, None, torch.tensor([1.0]), kl_coef=0, entropy_coef=0)
    assert loss.item() == -1.0 and set(parts) == {"pg", "clipped"}
