"""Test stand-in for comfy.model_sampling (v0.3.64): only the class relations the BFR SD nodes test.

In ComfyUI the prediction classes set how noise is added: EPS and its subclasses (V_PREDICTION, EDM, X0) use
x = x0 + σ·ε; CONST (SD3, Flux: flow matching) uses x = (1 − σ)·x0 + σ·ε. `model_base.model_sampling()` builds
the MODEL's sampling object from a class made on the fly, `class ModelSampling(sampling, prediction)`, so the
object's class name is always "ModelSampling" and only isinstance tells the kind."""


class EPS:
    pass


class V_PREDICTION(EPS):
    pass


class X0(EPS):
    pass


class CONST:
    pass


class ModelSamplingDiscrete:
    pass


class ModelSamplingDiscreteFlow:
    pass


def model_sampling(sampling: type, prediction: type, base: type = object) -> type:
    """The class ComfyUI's model_base makes: named ModelSampling whatever it samples."""
    return type("ModelSampling", (base, sampling, prediction), {})
