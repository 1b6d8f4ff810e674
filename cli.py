"""The `anandasky-batch` command line: parses arguments, calls one function, maps errors to exit codes.

Heavy imports (torch, transformers) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli_options import (
    DeviceOption,
    DtypeOption,
    Impl,
    ImplOption,
    ModelOption,
    PdfPasswordOption,
    QuietOption,
    Rasterizer,
    RayLoadingOption,
    RayOption,
    RayResourceOption,
    TestSize,
    checked_image,
    checked_model_folder,
    show_version,
    split_list,
    stop_on_sigterm_as_on_ctrl_c,
)
from pipeline.errors import AnandaSkyError, ExitCode

app = typer.Typer(
    help="Batch text recognition of archive collections with the AnandaSky model: "
    "PDF/TIFF/JPEG/PNG/JPEG 2000 in, ALTO 4.4 and plain text out, resumable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def run(
    inputs: Annotated[
        list[Path], typer.Argument(help="Files and folders to transcribe (walked recursively).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output folder; holds the job store, so rerunning resumes."
        ),
    ],
    model: ModelOption,
    device: DeviceOption = "auto",
    devices: Annotated[
        str | None,
        typer.Option(
            help="Device ids, e.g. 0,1,2,3 (default: ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES, else all)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes when running on CPU.")] = 1,
    dtype: DtypeOption = None,
    impl: ImplOption = Impl.auto,
    prompt: Annotated[
        str | None, typer.Option(help="Instruction given to the model with each page.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens generated per page.")] = 2048,
    repetition_guard: Annotated[
        bool, typer.Option(help="Stop a page stuck repeating itself.")
    ] = True,
    dpi: Annotated[int, typer.Option(help="Resolution PDFs are rendered at.")] = 300,
    rasterizer: Annotated[Rasterizer, typer.Option(help="PDF renderer.")] = Rasterizer.pdfium,
    pdf_password: PdfPasswordOption = None,
    max_image_pixels: Annotated[
        int, typer.Option(help="Refuse images larger than this (decompression bombs).")
    ] = 250_000_000,
    batch_size: Annotated[
        int, typer.Option(help="Pages per batch sent to a worker (each holds up to 4).")
    ] = 8,
    max_batch: Annotated[
        int | None,
        typer.Option(
            help="Rows a worker decodes at once, refilled as pages finish, across its "
            "batches (default: --batch-size; x4 with --layout lines)."
        ),
    ] = None,
    token_budget: Annotated[
        int | None, typer.Option(help="KV-cache positions all rows together may hold.")
    ] = None,
    decode_graphs: Annotated[
        bool,
        typer.Option(
            help="Decode at fixed shapes captured as CUDA / NPU graphs (native model; "
            "experimental, not yet measured on a device; on CPU the same shapes run slower)."
        ),
    ] = False,
    max_attempts: Annotated[
        int, typer.Option(help="Tries per page before it is marked failed.")
    ] = 3,
    batch_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a worker holding batches may go without answering one before it is "
            "killed and replaced and its pages retried (0: 300 + 0.2 per token of "
            "--max-new-tokens per page of a batch)."
        ),
    ] = 0,
    formats: Annotated[str, typer.Option(help="Comma-separated outputs: alto,txt.")] = "alto,txt",
    loaders: Annotated[
        int,
        typer.Option(
            help="CPU processes that rasterize and decode pages and detect their lines ahead "
            "of the devices (0: automatic; with line detection the cores left after one per "
            "accelerator and one for the coordinator, or half the cores on CPU, at most 32; "
            "with --detector none one per 8 cores, 1 to 8)."
        ),
    ] = 0,
    new_config: Annotated[
        bool, typer.Option(help="Redo everything in OUT under new settings.")
    ] = False,
    recover_store: Annotated[
        bool,
        typer.Option(
            help="If OUT's job store is damaged, keep it aside and rebuild it (pages are redone)."
        ),
    ] = False,
    ray: RayOption = None,
    ray_resource: RayResourceOption = None,
    ray_loading: RayLoadingOption = "head",
    include: Annotated[
        list[str] | None,
        typer.Option(
            help="Only files whose path under their input matches this glob (repeatable; "
            "`*` crosses folders; a glob without `/` also matches the bare file name)."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Leave out files matching this glob (repeatable; as --include)."),
    ] = None,
    prune: Annotated[
        bool,
        typer.Option(help="Forget documents whose input file is gone, with their outputs."),
    ] = False,
    layout: Annotated[
        str,
        typer.Option(
            help="page: recognise whole pages (the detected text area gives block coordinates); "
            "lines: recognise each detected line (every line gets its position)."
        ),
    ] = "page",
    reading_order: Annotated[
        str, typer.Option(help="auto | horizontal | vertical-rl: order of the detected lines.")
    ] = "auto",
    detector: Annotated[
        str, typer.Option(help="rapidocr | none (no line detection, no coordinates).")
    ] = "rapidocr",
    detector_max_side: Annotated[
        int, typer.Option(help="Long side (pixels) of the image the line detector sees.")
    ] = 1536,
    quiet: QuietOption = False,
) -> int:
    """Transcribe a collection into OUT; run it again to resume after any interruption."""
    from pipeline.launch import run as run_collection
    from pipeline.runner.settings import RunSettings

    settings = RunSettings(
        inputs=tuple(str(p.absolute()) for p in inputs),  # stored for `resume`, which may
        out_dir=str(out.absolute()),  # run from another folder
        model_dir=str(model.absolute()),
        device=device,
        devices=devices,
        workers=workers,
        dtype=dtype,
        impl=impl.value,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        repetition_guard=repetition_guard,
        dpi=dpi,
        rasterizer=rasterizer.value,
        pdf_password=pdf_password,
        max_image_pixels=max_image_pixels,
        batch_size=batch_size,
        max_batch=max_batch,
        token_budget=token_budget,
        decode_graphs=decode_graphs,
        max_attempts=max_attempts,
        batch_timeout=batch_timeout,
        formats=split_list(formats),
        loaders=loaders,
        quiet=quiet,
        new_config=new_config,
        recover_store=recover_store,
        ray=ray,
        ray_resource=ray_resource,
        ray_loading=ray_loading,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        prune=prune,
        layout=layout,
        reading_order=reading_order,
        detector=detector,
        detector_max_side=detector_max_side,
    )
    return run_collection(settings)


@app.command()
def resume(
    out: Annotated[Path, typer.Argument(help="Output folder of an earlier run.")],
    pdf_password: PdfPasswordOption = None,
    device: Annotated[str | None, typer.Option(help="Override the stored device.")] = None,
    devices: Annotated[str | None, typer.Option(help="Override the stored device ids.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Override the stored CPU worker count.")
    ] = None,
    ray: Annotated[
        str | None, typer.Option(help="Override the stored Ray cluster address.")
    ] = None,
    quiet: QuietOption = False,
) -> int:
    """Rerun OUT with the settings stored by its first run."""
    from pipeline.launch import resume as resume_collection

    return resume_collection(
        out,
        pdf_password=pdf_password,
        device=device,
        devices=devices,
        workers=workers,
        ray=ray,
        quiet=quiet,
    )


@app.command()
def status(
    out: Annotated[Path, typer.Argument(help="Output folder of a run (may be running now).")],
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> int:
    """Pages per state, per-device throughput, and failed documents/pages with reasons."""
    from pipeline.jobs.status import print_status

    return print_status(out, as_json=json_output)


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="Output folder of a run (may be running now).")],
    to: Annotated[
        Path,
        typer.Option(help="Delivery folder; created if missing, brought up to date if not."),
    ],
    formats: Annotated[
        str, typer.Option("--format", help="Comma-separated: txt,alto,mets,page,hocr,pdf.")
    ] = "txt,alto,mets",
    documents: Annotated[
        list[str] | None,
        typer.Option(
            help="Only documents whose input path (as `status` shows it) matches this glob; repeatable."
        ),
    ] = None,
    include_failed: Annotated[
        bool, typer.Option(help="Write placeholders, marked as such, for pages without text.")
    ] = False,
    zip_archive: Annotated[
        bool, typer.Option("--zip", help="Also write the delivery as one archive, DIR.zip.")
    ] = False,
    page_separator: Annotated[
        str,
        typer.Option(
            help="Between pages in a document's txt; \\f \\n \\t \\\\ are understood, {page} is the next page's number."
        ),
    ] = "\\f",
    per_page_txt: Annotated[bool, typer.Option(help="Also one txt file per page.")] = False,
    pdfa: Annotated[
        bool,
        typer.Option(
            "--pdfa", help="Declare the PDFs PDF/A-2b (checks what can be checked without veraPDF)."
        ),
    ] = False,
) -> int:
    """Write a delivery package per document (txt, ALTO, METS, PAGE, hOCR, searchable PDF) and a report of what is missing."""
    from pipeline.export import export_collection, parse_separator

    report = export_collection(
        out,
        to,
        formats=split_list(formats),
        documents=documents or (),
        include_failed=include_failed,
        zip_archive=zip_archive,
        page_separator=parse_separator(page_separator),
        per_page_txt=per_page_txt,
        pdfa=pdfa,
    )
    print(report.summary())
    return report.exit_code


@app.command()
def evaluate(
    out: Annotated[
        Path | None, typer.Argument(help="Output folder of a run (finished or not).")
    ] = None,
    gt: Annotated[
        Path, typer.Option("--gt", help="Ground-truth file or folder (ALTO, PAGE, hOCR, text).")
    ] = ...,
    pred: Annotated[
        Path | None,
        typer.Option(help="Compare these prediction files or folder instead of a run's OUT."),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option("--map", help="CSV `gt,document,page` for GT files named otherwise."),
    ] = None,
    normalize: Annotated[
        str, typer.Option(help="Comma-separated: case,whitespace,punctuation,historic.")
    ] = "",
    iou: Annotated[float, typer.Option(help="IoU for a detected line to count.")] = 0.5,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of the table.")
    ] = False,
    json_file: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the HTML report here.")] = None,
    thumbnails: Annotated[
        bool, typer.Option(help="Page thumbnails in the HTML report (from the run's sources).")
    ] = True,
    workers: Annotated[
        int, typer.Option(help="Count in this many processes (worth it with idle cores).")
    ] = 1,
) -> int:
    """CER and WER against ground truth per page, document and collection (docs/EVALUATE.md)."""
    from pipeline.evaluate.command import run_evaluate

    return run_evaluate(
        out,
        gt=gt,
        pred=pred,
        mapping=mapping,
        normalize=normalize,
        iou=iou,
        as_json=json_output,
        json_file=json_file,
        html_file=html,
        thumbnails=thumbnails,
        workers=workers,
    )


@app.command()
def infer(
    model: ModelOption,
    image: Annotated[Path, typer.Option(help="One image (or the first page of a PDF).")],
    prompt: Annotated[str | None, typer.Option()] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    impl: ImplOption = Impl.auto,
    max_new_tokens: Annotated[int, typer.Option()] = 2048,
    pdf_password: PdfPasswordOption = None,
) -> int:
    """Transcribe a single image and print the text."""
    from pipeline.runner.single_image import transcribe_file

    with checked_image(image, max_new_tokens):
        text = transcribe_file(
            model,
            image,
            prompt=prompt,
            device=device,
            dtype=dtype,
            impl=impl.value,
            max_new_tokens=max_new_tokens,
            pdf_password=pdf_password,
        )
    print(text)
    return ExitCode.OK


@app.command()
def verify(
    model: ModelOption,
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    images: Annotated[
        list[Path] | None,
        typer.Option(
            help="Page to check (first page of the file); repeatable. Default: samples/inputs."
        ),
    ] = None,
    impl: ImplOption = Impl.auto,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where the JSON report is written.")
    ] = Path("eval_results.json"),
    reference_model: Annotated[
        Path | None,
        typer.Option(help="Reference weights folder (default: --model), run on CPU in float32."),
    ] = None,
    reference_impl: Annotated[
        Impl | None,
        typer.Option(help="Reference implementation (default: the one --impl resolves to)."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens per page.")] = 48,
) -> int:
    """Check this device/dtype against CPU float32 on fixed pages; exit 1 if a threshold fails."""
    from pipeline.verify.check import run_verify

    return run_verify(
        model_dir=model,
        device=device,
        dtype=dtype,
        images=images,
        impl=impl.value,
        out_path=out,
        reference_dir=reference_model,
        reference_impl=reference_impl.value if reference_impl else None,
        max_new_tokens=max_new_tokens,
    )


@app.command("make-test-model")
def make_test_model(
    directory: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    size: Annotated[
        TestSize, typer.Option(help="tiny: a few M parameters; seed: ~41M (full ViT).")
    ] = TestSize.tiny,
) -> int:
    """Write a deterministic random-weight checkpoint for tests and trials (not a real model)."""
    from pipeline.model import make_test_model as make

    with checked_model_folder(directory):
        path = make(directory, size=size.value)
    print(path)
    return ExitCode.OK


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # Options that apply before any command (only --version); the help text is the app's.
    return None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every outcome becomes one line on stderr and a documented exit code.

    Usage errors are typer's own one-line message (exit 2); an `AnandaSkyError` is its message and
    its code; anything unforeseen is an internal error (exit 15) whose traceback goes to the run
    log (or a file in the temp folder), never to the terminal.
    """
    stop_on_sigterm_as_on_ctrl_c()
    if getattr(sys.stdout, "errors", None) == "strict":  # a name that is not UTF-8 prints
        sys.stdout.reconfigure(errors="backslashreplace")  # escaped, never crashes a command
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="anandasky-batch", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = ExitCode.INTERRUPTED
    except typer.TyperException as exc:  # usage errors: missing/unknown options, bad values
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print(f"anandasky-batch: error: {exc}", file=sys.stderr)
        code = ExitCode.BAD_ARGUMENTS
    except AnandaSkyError as exc:
        print(f"anandasky-batch: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    except Exception as exc:
        from pipeline.crash import record_internal_error

        where = record_internal_error(exc)
        print(
            f"anandasky-batch: internal error ({type(exc).__name__}: {exc}). This is a bug; "
            f"the traceback is in {where}. Please report it with that file.",
            file=sys.stderr,
        )
        code = ExitCode.INTERNAL_ERROR
    sys.exit(int(code or 0))


if __name__ == "__main__":
    main()
