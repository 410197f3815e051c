"""Biomedisa 3-D U-Nets built in Keras 3 (torch backend) as Biomedisa builds them and saved as
Biomedisa saves them (``.h5`` with a ``meta/`` group, either generation), for the tests that read
them through sxtdask (test_biomedisa.py, test_segment3d.py). Import it after
``pytest.importorskip("keras")``.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402

L = keras.layers


def _block(x, f, b, resnet):
    """Biomedisa's conv block (REFERENCE-3D §1), in Keras."""
    if resnet:
        res = L.Conv3D(f, 1, padding="same", use_bias=False, name=f"Identity{b}_1")(x)
        y = L.Conv3D(f, 3, activation="relu", padding="same", name=f"conv_{b}_1")(x)
        y = L.Activation("relu")(L.BatchNormalization(name=f"batch_norm_{b}_1")(y))
        y = L.Conv3D(f, 3, padding="same", name=f"conv_{b}_2")(y)
        y = L.BatchNormalization(name=f"batch_norm_{b}_2")(y)
        return L.ReLU()(L.Add()([res, y]))
    for s in (1, 2):
        x = L.Conv3D(f, 3, activation="relu", padding="same", name=f"conv_{b}_{s}")(x)
        x = L.Activation("relu")(L.BatchNormalization(name=f"batch_norm_{b}_{s}")(x))
    return x


def keras_unet(filters, channels=1, n_labels=3, resnet=False, size=32):
    inputs = keras.Input((size, size, size, channels))
    x, skips, b = inputs, [], 1
    for f in filters[:-1]:
        x = _block(x, f, b, resnet)
        skips.append(x)
        x = L.MaxPooling3D(2)(x)
        b += 1
    x = _block(x, filters[-1], b, resnet)
    b += 1
    for k, f in enumerate(filters[:-1][::-1]):
        x = L.Concatenate()([L.UpSampling3D(2)(x), skips[-(k + 1)]])
        x = _block(x, f, b, resnet)
        b += 1
    x = L.Conv3D(n_labels, 1, name=f"conv_{b}_1")(x)
    x = L.Activation("softmax")(L.Reshape((size ** 3, n_labels))(x))
    model = keras.Model(inputs, L.Reshape((size, size, size, n_labels))(x))
    rng = np.random.default_rng(len(filters) + 10 * resnet)
    for layer in model.layers:  # BatchNorm statistics far from the defaults
        w = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            g, beta, mean, var = w
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    return model


def add_meta(path, generation, labels=(0, 1, 2), mu=0.4, sig=0.2):
    with h5py.File(path, "r+") as f:
        g = f.create_group("meta")
        g.create_dataset("labels", data=np.array(labels))
        if generation == "2023":
            g.create_dataset("configuration", data=np.array([1, 128, 96, 64, 1, mu, sig]))
        else:
            g.create_dataset("normalization", data=np.array([[mu], [sig]]))
            g.create_dataset("patch_normalization", data=0)
            g.create_dataset("scaling", data=1)
            g.create_dataset("patch_size", data=np.array([64, 64, 64]))


def to_tf2_layout(path):
    """Rewrite a Keras 3 file as tf.keras 2 wrote them: ``:0`` weight suffixes, and the
    layer_names attribute split into layer_names0/1.
    """
    with h5py.File(path, "r+") as f:
        mw = f["model_weights"]
        for layer in [n.decode() if isinstance(n, bytes) else n for n in mw.attrs["layer_names"]]:
            g = mw[layer]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
            for n in names:
                g.move(n, n + ":0")
            if names:
                g.attrs["weight_names"] = [(n + ":0").encode() for n in names]
        names = list(mw.attrs["layer_names"])
        del mw.attrs["layer_names"]
        half = len(names) // 2
        mw.attrs["layer_names0"] = [str(n).encode() for n in names[:half]]
        mw.attrs["layer_names1"] = [str(n).encode() for n in names[half:]]


def write_meta(path, generation, *, labels=(0, 5, 9), scale=(64, 64, 64), patch=None, mu=0.4,
               sig=0.2, materials=()):
    """Biomedisa's ``meta/`` group with a chosen grid: ``configuration`` (x, y, z scales) in both
    generations, plus ``normalization``, ``patch_normalization``, ``scaling`` and ``patch_size``
    in the later one; ``materials`` as an AmiraMesh ``header`` (bytes), as Biomedisa keeps the
    training labels' header.
    """
    z, y, x = scale
    with h5py.File(path, "r+") as f:
        g = f.create_group("meta")
        g.create_dataset("labels", data=np.array(labels))
        g.create_dataset("configuration", data=np.array([1, x, y, z, 1, mu, sig]))
        if generation == "2024":
            g.create_dataset("normalization", data=np.array([[mu], [sig]]))
            g.create_dataset("patch_normalization", data=0)
            g.create_dataset("scaling", data=1)
            g.create_dataset("patch_size", data=np.array(patch or (64, 64, 64)))
        if materials:
            body = "".join(f"        {m} {{\n            Color 0.5 0.5 0.5\n        }}\n"
                           for m in materials)
            header = f"# AmiraMesh 3D ASCII 2.0\n\nParameters {{\n    Materials {{\n{body}    }}\n}}\n"
            g.create_dataset("header", data=np.frombuffer(header.encode(), np.uint8))


def recentre_final(model, sample, spread=2.0):
    """Scale the final 1×1×1 conv of a :func:`keras_unet` model so that its logits spread by
    ``spread`` over ``sample`` (N, z, y, x, C), and set its bias so that every label wins on
    about the same share of it: a random net that answers one label everywhere could not show
    a wrong label value.
    """
    final = next(layer for layer in reversed(model.layers) if isinstance(layer, L.Conv3D))
    w, b = final.get_weights()
    logits = keras.ops.convert_to_numpy(keras.Model(model.inputs[0], final.output)(sample))
    logits = logits.reshape(-1, logits.shape[-1]) - b
    gain = spread / max(float(logits.std(axis=0).mean()), 1e-12)
    logits = gain * logits
    bias = -np.median(logits, axis=0)
    for step in np.linspace(0.3, 0.01, 200):  # the logits are linear in the bias: balance
        share = np.bincount((logits + bias).argmax(axis=1), minlength=bias.size) / len(logits)
        bias -= step * np.log(np.maximum(share * bias.size, 1e-2))
    final.set_weights([w * gain, bias.astype(b.dtype)])
