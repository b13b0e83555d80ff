"""The trained model: one float32 input [batch, F] in, P(label = 1) [batch, 1] out.

Preprocessing lives inside the module (log1p of heavy-tailed columns, standardization with the
training split's mean and std as buffers, categorical codes to embeddings or one-hot), so the
exported ONNX / TorchScript file takes the raw feature vector a client sends, and serving needs
no separate preprocessing step that could drift out of sync with training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from loopserve.training.config import ModelSpec


class TabularMLP(nn.Module):
    def __init__(self, feature_names: list[str], categorical: dict[str, int], spec: ModelSpec,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None):
        super().__init__()
        self.feature_names = list(feature_names)
        cat_names = [n for n in feature_names if n in categorical]
        num_names = [n for n in feature_names if n not in categorical]
        index = {n: i for i, n in enumerate(feature_names)}
        self.register_buffer("num_index", torch.tensor([index[n] for n in num_names], dtype=torch.long))
        self.register_buffer("log_mask", torch.tensor([n in spec.log_features for n in num_names], dtype=torch.bool))
        n_num = len(num_names)
        self.register_buffer("mean", torch.as_tensor(mean if mean is not None else np.zeros(n_num), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std if std is not None else np.ones(n_num), dtype=torch.float32))
        self.cat_columns = [index[n] for n in cat_names]
        self.cardinalities = [int(categorical[n]) for n in cat_names]
        self.onehot = spec.categorical_encoding == "onehot"
        width = n_num
        self.embeddings = nn.ModuleList()
        for card in self.cardinalities:
            if self.onehot:
                width += card
            else:
                dim = spec.embedding_dim or min(16, (card + 1) // 2)
                self.embeddings.append(nn.Embedding(card, dim))
                width += dim
        layers: list[nn.Module] = []
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if spec.dropout:
                layers.append(nn.Dropout(spec.dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def transform_numeric(self, x: torch.Tensor) -> torch.Tensor:
        """The numeric columns after log1p (where configured), before standardizing."""
        num = x.index_select(1, self.num_index)
        return torch.where(self.log_mask, torch.log1p(torch.clamp(num, min=0.0)), num)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        parts = [(self.transform_numeric(x) - self.mean) / self.std]
        for i, (column, card) in enumerate(zip(self.cat_columns, self.cardinalities)):
            # Unseen or missing codes are clamped into range rather than failing the request.
            codes = torch.nan_to_num(x[:, column], nan=0.0).long().clamp(0, card - 1)
            if self.onehot:
                parts.append(nn.functional.one_hot(codes, card).to(x.dtype))
            else:
                parts.append(self.embeddings[i](codes))
        return self.mlp(torch.cat(parts, dim=1))

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        # `logits=True` is for training (through DDP's forward); exports and serving take probabilities.
        z = self.logits(x)
        return z if logits else torch.sigmoid(z)


def fit_normalization(model: TabularMLP, features: np.ndarray) -> None:
    """Set the standardization buffers from the training rows (after the log transform)."""
    with torch.no_grad():
        num = model.transform_numeric(torch.from_numpy(features)).double()
        mean = num.mean(dim=0)
        std = num.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))  # a constant column stays as it is
        model.mean.copy_(mean.float())
        model.std.copy_(std.float())


def predict(model: nn.Module, features: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """P(label = 1) per row, float32 [n], with the eager module."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(features), batch):
            x = torch.from_numpy(np.ascontiguousarray(features[i:i + batch])).to(device)
            out.append(model(x).reshape(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)
