"""Where users come from: Axolotl configs in and out (`axolotl`), the Unsloth training backend
(`backends`), and bases that are already quantized, like Unsloth's `-bnb-4bit` repos (`prequantized`)."""
