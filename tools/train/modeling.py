"""ModuleFormer in PyTorch, written from the model's exact inference math (the engine's contract) for training the demo model.

Module and parameter names follow the checkpoint layout (`transformer.h.i.attn.q_proj.
experts.weight`, ...), so `state_dict()` is the exported checkpoint. Experts are evaluated
densely and weighted by a gate matrix that is zero outside each token's top-k: for these
small models that is faster on a GPU than gathering, and it is exactly the sparse
mixture (non-chosen experts contribute 0 * finite = 0 and receive no gradient).
"""
import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F


@dataclasses.dataclass
class Config:
    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    att_hidden: int
    ffd_hidden: int
    n_att_experts: int
    k_att: int
    n_mlp_experts: int
    k_mlp: int
    gating_size: int
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 0
    eos_token_id: int = 0
    dropout: float = 0.0

    @staticmethod
    def from_json(doc):
        fields = {f.name for f in dataclasses.fields(Config)}
        return Config(**{key: value for key, value in doc.items() if key in fields})

    def to_json(self):
        return {
            "activation_function": "gelu_new", "architectures": ["ModuleFormerForCausalLM"],
            "att_func": "stickbreaking", "att_hidden": self.att_hidden, "aux_loss_type": "mi",
            "block_size": 256, "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "ffd_hidden": self.ffd_hidden, "gate_type": "mlp", "gating_size": self.gating_size,
            "k_att": self.k_att, "k_mlp": self.k_mlp, "layer_norm_epsilon": self.layer_norm_epsilon,
            "model_type": "moduleformer", "n_att_experts": self.n_att_experts, "n_embd": self.n_embd,
            "n_head": self.n_head, "n_layer": self.n_layer, "n_mlp_experts": self.n_mlp_experts,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": self.vocab_size,
        }

    @property
    def kv_is_input(self):
        """MoLM's case: one head as wide as the model, keys = values = the LayerNorm output."""
        return self.n_head == 1 and self.att_hidden == self.n_embd


def widened(x):
    """Half-precision activations are widened to float32 for softmax and attention; float64 stays."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class Router(nn.Module):
    """p = softmax(W2 gelu(W1 x + b1)); the top-k probabilities are the gates (not renormalised)."""

    def __init__(self, n_embd, gating_size, num_experts, k):
        super().__init__()
        self.k = k
        # Index 2 is a (disabled) dropout, so the weights are named w_gate.0 and w_gate.3.
        self.w_gate = nn.Sequential(nn.Linear(n_embd, gating_size), nn.GELU(), nn.Dropout(0.0),
                                    nn.Linear(gating_size, num_experts, bias=False))

    def forward(self, x):
        probs = torch.softmax(widened(self.w_gate(x)), dim=-1).to(x.dtype)
        top_gates, top_experts = probs.topk(self.k, dim=-1)
        gate_matrix = torch.zeros_like(probs).scatter(-1, top_experts, top_gates)
        return probs, gate_matrix, top_experts, top_gates


class ParallelExperts(nn.Module):
    """One [in, out] matrix per expert (the transpose of nn.Linear's layout), as checkpoints store them."""

    def __init__(self, num_experts, inputs, outputs, std):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_experts, inputs, outputs) * std)


class MixtureOfExperts(nn.Module):
    """Input and output expert matrices plus the router of one mixture."""

    def __init__(self, config, num_experts, k, inner):
        super().__init__()
        self.experts = ParallelExperts(num_experts, config.n_embd, inner, config.n_embd ** -0.5)
        self.output_experts = ParallelExperts(num_experts, inner, config.n_embd, (inner * 2 * config.n_layer) ** -0.5)
        self.gate = Router(config.n_embd, config.gating_size, num_experts, k)


def stick_breaking(q, k, v):
    """q, k, v: [..., T, dh]. a_ij = sigmoid(l_ij) prod_{j<m<=i} (1 - sigmoid(l_im)), in log space."""
    length = q.shape[-2]
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    log_keep = (-F.softplus(logits)).masked_fill(~causal, 0.0)      # log(1 - sigmoid(l_im)), 0 beyond i
    later_keep = log_keep.sum(-1, keepdim=True) - log_keep.cumsum(-1)  # sum over j < m <= i
    log_weights = -F.softplus(-logits) + later_keep
    weights = torch.exp(log_weights).masked_fill(~causal, 0.0)
    return weights @ v


class MixtureOfAttention(nn.Module):
    def __init__(self, config, num_experts):
        super().__init__()
        self.config = config
        self.q_proj = MixtureOfExperts(config, num_experts, config.k_att, config.att_hidden)
        if not config.kv_is_input:
            self.k_proj = nn.Linear(config.n_embd, config.att_hidden)
            self.v_proj = nn.Linear(config.n_embd, config.att_hidden)

    def forward(self, x):
        batch, length, _ = x.shape
        heads, head_dim = self.config.n_head, self.config.att_hidden // self.config.n_head
        probs, gates, experts, top_gates = self.q_proj.gate(x)
        if self.config.kv_is_input:
            keys = values = x
        else:
            keys, values = self.k_proj(x), self.v_proj(x)
        num_experts = gates.shape[-1]
        q = torch.einsum("btd,eda->beta", x, self.q_proj.experts.weight)
        q = q.reshape(batch, num_experts, length, heads, head_dim).transpose(2, 3)       # [B,E,H,T,dh]
        k = keys.reshape(batch, 1, length, heads, head_dim).transpose(2, 3)              # [B,1,H,T,dh]
        v = values.reshape(batch, 1, length, heads, head_dim).transpose(2, 3)
        o = stick_breaking(widened(q), widened(k), widened(v)).to(x.dtype)                  # [B,E,H,T,dh]
        o = o.transpose(2, 3).reshape(batch, num_experts, length, heads * head_dim)
        y = torch.einsum("beta,ead,bte->btd", o, self.q_proj.output_experts.weight, gates)
        return y, (probs, experts, top_gates)


class MixtureOfMlp(MixtureOfExperts):
    def __init__(self, config, num_experts):
        super().__init__(config, num_experts, config.k_mlp, config.ffd_hidden)

    def forward(self, x):
        probs, gates, experts, top_gates = self.gate(x)
        hidden = gelu_new(torch.einsum("btd,edf->btef", x, self.experts.weight))
        y = torch.einsum("btef,efd,bte->btd", hidden, self.output_experts.weight, gates)
        return y, (probs, experts, top_gates)


class Block(nn.Module):
    def __init__(self, config, num_att_experts, num_mlp_experts):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = MixtureOfAttention(config, num_att_experts)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlpf = MixtureOfMlp(config, num_mlp_experts)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h):
        attention, att_routing = self.attn(self.ln_1(h))
        h = h + self.dropout(attention)
        mlp, mlp_routing = self.mlpf(self.ln_2(h))
        h = h + self.dropout(mlp)
        return h, (att_routing, mlp_routing)


class Transformer(nn.Module):
    def __init__(self, config, expert_counts):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(Block(config, att, mlp) for att, mlp in expert_counts)
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout)


class ModuleFormer(nn.Module):
    """forward(ids) -> (logits [B,T,V], routing: per layer (attention, mlp) of (probs, experts, gates))."""

    def __init__(self, config, expert_counts=None):
        super().__init__()
        self.config = config
        if expert_counts is None:
            expert_counts = [(config.n_att_experts, config.n_mlp_experts)] * config.n_layer
        self.transformer = Transformer(config, expert_counts)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        nn.init.normal_(self.transformer.wte.weight, std=0.02)
        nn.init.normal_(self.lm_head.weight, std=config.n_embd ** -0.5)

    def forward(self, ids):
        h = self.transformer.dropout(self.transformer.wte(ids))
        routing = []
        for block in self.transformer.h:
            h, layer_routing = block(h)
            routing.append(layer_routing)
        return self.lm_head(self.transformer.ln_f(h)), routing


def mutual_information_loss(routing):
    """The paper's load-balancing loss: -MI(token; expert) = H(expert | token) - H(expert),
    from the full router distributions of the batch, averaged over all mixtures."""
    losses = []
    for layer in routing:
        for probs, _, _ in layer:
            probs = probs.float().reshape(-1, probs.shape[-1])
            marginal = probs.mean(0)
            marginal_entropy = -(marginal * torch.log(marginal + 1e-9)).sum()
            conditional_entropy = -(probs * torch.log(probs + 1e-9)).sum(-1).mean()
            losses.append(conditional_entropy - marginal_entropy)
    return torch.stack(losses).mean()


def expert_counts_from_state(state, n_layer):
    counts = []
    for layer in range(n_layer):
        prefix = f"transformer.h.{layer}."
        counts.append((state[prefix + "attn.q_proj.experts.weight"].shape[0],
                       state[prefix + "mlpf.experts.weight"].shape[0]))
    return counts
