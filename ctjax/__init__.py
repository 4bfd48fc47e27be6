"""ctjax: a JAX research training framework for custom model training."""
