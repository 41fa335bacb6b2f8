//! `bench --plot` and `train --plot`: SVG pictures of what the tables print, drawn with
//! plotters' pure-Rust SVG backend (text is left to the viewer's fonts, so nothing is rasterised
//! and no font files are needed).

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use softmax_ce::train::EpochMetrics;

/// One bar of the bench plot: a path's rate on one case, and the rate of its device's copy of
/// the same bytes (the speed of light the bar is held to), where the case moves bytes.
#[derive(Clone, Debug)]
pub struct BenchBar {
    /// The case: op, shape and, for half precision, `f16`.
    pub case: String,
    pub path: String,
    /// GB/s for the row ops, GFLOP/s for products and epochs.
    pub rate: f64,
    /// Whether `rate` is GB/s (else GFLOP/s).
    pub bytes: bool,
    /// The device's fastest copy of the case's bytes, GB/s.
    pub copy: Option<(String, f64)>,
}

const WIDTH: u32 = 1100;
/// Pixels per case of the bench plot (its bars side by side), and around them.
const CASE: u32 = 14;
const FRAME: u32 = 110;
/// The legend's strip, right of the bars.
const LEGEND: u32 = 250;

/// A plotters error, named by what was being drawn (its own types are generic over the
/// backend's error).
fn drawing<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> anyhow::Error {
    move |e| anyhow!("drawing {what}: {e:?}")
}

/// The bench plot: one panel of GB/s (the row ops, each case's bars beside its devices' copy
/// lines) and one of GFLOP/s (products, epochs); a row of bars per case, one bar per path, on a
/// log scale (the rates span three decades).
pub fn bench_svg(bars: &[BenchBar], title: &str) -> Result<String> {
    let memory: Vec<&BenchBar> = bars.iter().filter(|b| b.bytes).collect();
    let compute: Vec<&BenchBar> = bars.iter().filter(|b| !b.bytes).collect();
    let height = |set: &[&BenchBar]| -> u32 {
        let slots: usize = unique(set.iter().map(|b| b.case.as_str()))
            .iter()
            .map(|case| set.iter().filter(|b| b.case == *case).count() + 1)
            .sum();
        FRAME + CASE * slots as u32
    };
    let (top_h, bottom_h) = (height(&memory), height(&compute));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, top_h + bottom_h)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing("the background"))?;
        let (top, bottom) = root.split_vertically(top_h);
        let caption = format!("{title}: GB/s, bytes read once + written once");
        panel(&top, &memory, &caption, "GB/s")?;
        panel(&bottom, &compute, &format!("{title}: GFLOP/s"), "GFLOP/s")?;
        root.present().map_err(drawing("the plot"))?;
    }
    Ok(svg)
}

/// The distinct items of `items`, in their first order.
fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    bars: &[&BenchBar],
    caption: &str,
    unit: &str,
) -> Result<()> {
    let cases = unique(bars.iter().map(|b| b.case.as_str()));
    let paths = unique(bars.iter().map(|b| b.path.as_str()));
    if cases.is_empty() {
        return Ok(());
    }
    // Each case a band of slots from the top: its name, then one per bar it has.
    let mut slot = Vec::with_capacity(bars.len());
    let mut band = Vec::with_capacity(cases.len());
    let mut next = 0.0;
    for case in &cases {
        let name = next;
        next += 1.0;
        // The paths in one order in every case.
        let mut own: Vec<&&BenchBar> = bars.iter().filter(|b| b.case == *case).collect();
        own.sort_by_key(|b| paths.iter().position(|p| *p == b.path));
        for b in own {
            slot.push((b, next));
            next += 1.0;
        }
        band.push((*case, name, next));
    }
    let rates = bars
        .iter()
        .flat_map(|b| std::iter::once(b.rate).chain(b.copy.as_ref().map(|c| c.1)))
        .filter(|r| r.is_finite() && *r > 0.0);
    let (lo, hi) = rates.fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
        (lo.min(r), hi.max(r))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo / 2.0, hi * 2.0)
    } else {
        (0.1, 10.0)
    };
    let (plot, legend) = area.split_horizontally(WIDTH - LEGEND);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(0)
        .build_cartesian_2d((lo..hi).log_scale(), next..0.0)
        .map_err(drawing("a panel"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc(unit)
        .draw()
        .map_err(drawing("the axes"))?;
    let color_of = |path: &str| Palette99::pick(paths.iter().position(|p| *p == path).unwrap_or(0));
    chart
        .draw_series(slot.iter().map(|(b, y)| {
            Rectangle::new(
                [(lo, y + 0.1), (b.rate.max(lo), y + 0.9)],
                color_of(&b.path).filled(),
            )
        }))
        .map_err(drawing("the bars"))?;
    // Each case's name in its band's first slot, at the plot's left edge.
    chart
        .draw_series(band.iter().map(|&(case, name, _)| {
            Text::new(
                case.to_string(),
                (lo * 1.05, name + 0.15),
                ("sans-serif", 11),
            )
        }))
        .map_err(drawing("the case names"))?;
    // The copy lines: the speed of light of the device each bar ran on, across its case.
    let devices = unique(
        bars.iter()
            .filter_map(|b| b.copy.as_ref().map(|c| c.0.as_str())),
    );
    let dash = |d: usize| ShapeStyle::from(&BLACK.mix(1.0 - 0.5 * d as f64)).stroke_width(2);
    for &(case, start, end) in &band {
        for (d, device) in devices.iter().enumerate() {
            let rate = bars
                .iter()
                .filter(|b| b.case == case)
                .find_map(|b| b.copy.as_ref().filter(|c| c.0 == *device).map(|c| c.1));
            if let Some(rate) = rate {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(rate, start + 1.0), (rate, end)],
                        dash(d),
                    )))
                    .map_err(drawing("the copy lines"))?;
            }
        }
    }
    // The legend, in its own strip: the paths' colours, then the copy lines.
    let entry = |i: usize| (10, 40 + 18 * i as i32);
    for (i, path) in paths.iter().enumerate() {
        let (x, y) = entry(i);
        legend
            .draw(&Rectangle::new(
                [(x, y), (x + 14, y + 10)],
                color_of(path).filled(),
            ))
            .map_err(drawing("the legend"))?;
        legend
            .draw(&Text::new(
                path.to_string(),
                (x + 20, y),
                ("sans-serif", 12),
            ))
            .map_err(drawing("the legend"))?;
    }
    for (d, device) in devices.iter().enumerate() {
        let (x, y) = entry(paths.len() + d);
        legend
            .draw(&PathElement::new(
                vec![(x + 7, y - 2), (x + 7, y + 12)],
                dash(d),
            ))
            .map_err(drawing("the legend"))?;
        legend
            .draw(&Text::new(
                format!("{device} copy of the bytes"),
                (x + 20, y),
                ("sans-serif", 12),
            ))
            .map_err(drawing("the legend"))?;
    }
    Ok(())
}

/// The training plot: the loss (top) and the error rate (bottom) per epoch, on the training
/// set and, where there is one, the test set.
pub fn train_svg(epochs: &[EpochMetrics], title: &str) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 2 * 360)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing("the background"))?;
        let (top, bottom) = root.split_vertically(360);
        let pick = |f: fn(&EpochMetrics) -> Option<f32>| -> Vec<(f64, f64)> {
            epochs
                .iter()
                .filter_map(|m| f(m).map(|v| (m.epoch as f64, f64::from(v))))
                .collect()
        };
        let loss = [
            ("train loss", pick(|m| Some(m.train_loss))),
            ("test loss", pick(|m| m.test_loss)),
        ];
        let err = [
            ("train error", pick(|m| Some(m.train_err))),
            ("test error", pick(|m| m.test_err)),
        ];
        curves(&top, &loss, &format!("{title}: loss"), "mean cross-entropy")?;
        curves(&bottom, &err, &format!("{title}: error rate"), "error rate")?;
        root.present().map_err(drawing("the plot"))?;
    }
    Ok(svg)
}

fn curves(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    series: &[(&str, Vec<(f64, f64)>)],
    caption: &str,
    unit: &str,
) -> Result<()> {
    let points = series.iter().flat_map(|(_, s)| s.iter());
    let (x_hi, y_hi) = points
        .filter(|(_, y)| y.is_finite())
        .fold((1.0f64, 0.0f64), |(x, y), &(px, py)| (x.max(px), y.max(py)));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..x_hi + 0.5, 0.0..(y_hi * 1.1).max(1e-6))
        .map_err(drawing("a panel"))?;
    chart
        .configure_mesh()
        // Whole epochs only.
        .x_labels((x_hi as usize + 1).min(21))
        .x_label_formatter(&|x| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .x_desc("epoch")
        .y_desc(unit)
        .draw()
        .map_err(drawing("the axes"))?;
    for (i, (name, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(drawing("a curve"))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(drawing("the points"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(drawing("the legend"))?;
    Ok(())
}
