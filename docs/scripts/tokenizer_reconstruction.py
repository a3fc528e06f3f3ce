"""How much the tokenizer loses: PSNR of reconstructions of the Fashion-MNIST test split, and the domain classifier's
accuracy on the reconstructions against its accuracy on the same real images (both prepared as training prepares
them: Lanczos 28 -> 32, full frame).

    python docs/scripts/tokenizer_reconstruction.py --model src/var_hf/default_model --num-images 2000
    python docs/scripts/tokenizer_reconstruction.py --vqvae runs/tok/vqvae \
        --domain-classifier src/var_hf/default_model/domain_classifier --num-images 2000

With `--sample-metrics DIR` it also scores reconstructions of the real training images that `var-hf evaluate
--real-images fashion-mnist` scores (100 a class, same seed), exactly as samples are scored (FID, precision, recall in
the domain space, the test split as reference): what a transformer that reproduced the data's token maps perfectly
would get with this tokenizer. DIR receives metrics.json and the reference feature cache (copy a cached
reference_features.npz there to skip featurising the 10,000 test images).
"""

import argparse
import os
import sys

import numpy as np
import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="pipeline folder (its vqvae/ and domain_classifier/ are used)")
    parser.add_argument("--vqvae", help="a tokenizer folder in place of <model>/vqvae (e.g. a train_vqvae run's vqvae/)")
    parser.add_argument("--domain-classifier", help="in place of <model>/domain_classifier")
    parser.add_argument("--num-images", type=int, default=2000, help="first N test images")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--sample-metrics", metavar="DIR", help="also score reconstructions of real training images")
    parser.add_argument("--num-per-class", type=int, default=100, help="training images per class for --sample-metrics")
    args = parser.parse_args(argv)
    if args.model is None and (args.vqvae is None or args.domain_classifier is None):
        parser.error("give --model, or both --vqvae and --domain-classifier")

    from var_hf import MultiScaleVQVAE
    from var_hf.data import ImageTransform, load_fashion_mnist
    from var_hf.evaluation import extract_feature_set, load_domain_classifier
    from var_hf.evaluation.metrics import class_accuracy

    vqvae = MultiScaleVQVAE.from_pretrained(args.vqvae or os.path.join(args.model, "vqvae")).eval()
    classifier = load_domain_classifier(args.domain_classifier or os.path.join(args.model, "domain_classifier"))
    test = load_fashion_mnist("test", max_samples=args.num_images)
    transform = ImageTransform(vqvae.config.image_size, mid_ratio=1.0, random_crop=False)
    real = torch.stack([transform(image) for image in test["image"]])  # (N, 3, H, W) in [-1, 1]
    labels = list(test["label"])
    with torch.no_grad():
        recon = torch.cat([vqvae.reconstruct(real[i:i + args.batch_size]) for i in range(0, len(real), args.batch_size)])

    real_u8, recon_u8 = to_uint8(real), to_uint8(recon)
    mse = ((real_u8.astype(np.float64) - recon_u8.astype(np.float64)) / 255.0) ** 2
    psnr = float(np.mean(10 * np.log10(1.0 / mse.reshape(len(mse), -1).mean(axis=1))))
    acc_real = class_accuracy(extract_feature_set(classifier, real_u8).logits, labels)
    acc_recon = class_accuracy(extract_feature_set(classifier, recon_u8).logits, labels)
    print(f"test images: {len(labels)}")
    print(f"PSNR (mean over images, uint8): {psnr:.2f} dB")
    print(f"class accuracy, real: {acc_real:.4f}; reconstructions: {acc_recon:.4f}; ratio {acc_recon / acc_real:.4f}")
    if args.sample_metrics:
        score_reconstructions(vqvae, classifier, args.sample_metrics, args.num_per_class, args.batch_size)
    return 0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def score_reconstructions(vqvae, classifier, output_dir, num_per_class, batch_size):
    from var_hf.evaluation import load_real_images
    from var_hf.evaluation.references import load_reference
    from var_hf.evaluation.sample_metrics import compute_sample_metrics
    from var_hf.file_utils import write_json_atomically

    resolution = vqvae.config.image_size
    images_u8, labels, _ = load_real_images("fashion-mnist", "train", resolution, num_per_class)
    real = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]
    with torch.no_grad():
        recon = torch.cat([vqvae.reconstruct(real[i:i + batch_size]) for i in range(0, len(real), batch_size)])
    recon_u8 = to_uint8(recon)
    reference = load_reference("fashion-mnist", split="test", resolution=resolution)
    os.makedirs(output_dir, exist_ok=True)
    results, _ = compute_sample_metrics(
        recon_u8, labels, classifier, reference, reference_cache=os.path.join(output_dir, "reference_features.npz"),
        what="reconstructions",
    )
    write_json_atomically(os.path.join(output_dir, "metrics.json"), {"reconstructions_of_train": results})
    print("reconstructions of real training images, " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))


if __name__ == "__main__":
    sys.exit(main())
