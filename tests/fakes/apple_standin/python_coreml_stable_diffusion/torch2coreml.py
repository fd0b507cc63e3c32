"""Stand-in for the four names of Apple's `python_coreml_stable_diffusion.torch2coreml` that the
`apple` adapter uses, with their signatures at commit e12202c: it records the calls, and its
`convert_unet` writes a real (one-op) ML program, which the harness's spec check must refuse."""

import argparse
import os

CALLS: list[tuple] = []


def parser_spec() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--convert-unet", action="store_true")
    p.add_argument("--model-version", required=True)
    p.add_argument("-o", required=True)
    p.add_argument("--attention-implementation", choices=("ORIGINAL", "SPLIT_EINSUM", "SPLIT_EINSUM_V2"))
    p.add_argument("--latent-h", type=int)
    p.add_argument("--latent-w", type=int)
    p.add_argument("--quantize-nbits", default=None, choices=(1, 2, 4, 6, 8), type=int)
    return p


def _get_out_path(args, submodule_name):
    fname = f"Stable_Diffusion_version_{args.model_version}_{submodule_name}.mlpackage".replace("/", "_")
    return os.path.join(args.o, fname)


def convert_unet(pipe, args, model_name=None):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    width = pipe.text_encoder.config.hidden_size
    tokens = pipe.text_encoder.config.max_position_embeddings

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, width, 1, tokens))])
    def prog(encoder_hidden_states):
        return mb.add(x=encoder_hidden_states, y=1.0, name="noise_pred")

    CALLS.append(("convert_unet", args.attention_implementation, args.latent_h, args.quantize_nbits,
                  type(pipe.unet).__name__, float(pipe.scheduler.timesteps[0])))
    ct.convert(prog, convert_to="mlprogram", skip_model_load=True).save(_get_out_path(args, "unet"))


def _quantize_weights(out_path, model_name, nbits):
    CALLS.append(("_quantize_weights", os.path.basename(out_path), os.path.exists(out_path), model_name, nbits))
