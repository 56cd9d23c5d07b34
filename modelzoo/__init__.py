"""kindling.modelzoo: the sample model repository, `kindling models build`.

build.py writes DIR/<name>/{model.onnx, config.yaml, extra files} for the six sample
models (its REGISTRY is the list): the papers' two sentence CNNs over word vectors
(text_cnn.py, with demo tables from real pretrained embeddings in word_vectors.py),
ImageNet classifiers with torchvision's layer structure and seeded weights (vision.py),
and all-MiniLM-L6-v2 as a hand-built graph (minilm.py), all through one small ONNX graph
builder (graph.py). cli.py is the command.
"""
