"""What an artifact folder holds and how it is read: the manifest, weight identity, the out folder
rules, runtime requirements, tokenizer golden strings and the onnxruntime-genai files."""
