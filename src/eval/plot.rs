//! SVG figures with `plotters`: line charts (optionally log x, error bars, a reference line),
//! dot-and-whisker charts of means with intervals, and grouped bars; several panels share one
//! file. Text is left to the SVG viewer's fonts (no font files are read), so drawing needs
//! nothing from the system.
//!
//! Every chart is drawn into a string and returned; [`super::report`] writes the files.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::EvalError;

/// Colour-blind-safe colours (Okabe & Ito 2008), in series order.
pub const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(90, 90, 90),
];

pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// One line of a line chart: points (x, y) and optional symmetric error half-widths.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub errors: Option<Vec<f64>>,
    /// Small extra points drawn without a line (e.g. single repeats around a mean).
    pub scatter: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// A panel of a line chart.
#[derive(Debug, Clone, Default)]
pub struct LinePanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub x_log: bool,
    /// Fixed y range; otherwise from the data with a margin.
    pub y_range: Option<(f64, f64)>,
    pub x_range: Option<(f64, f64)>,
    /// A horizontal reference line and its legend text.
    pub hline: Option<(f64, String)>,
    /// The diagonal y = x (calibration diagrams).
    pub diagonal: bool,
    /// Labels written beside points of the first series (e.g. "N=4").
    pub point_labels: Vec<String>,
    pub legend_lower_right: bool,
}

/// Means with intervals for categories (x) and series (offset side by side).
/// A point estimate with its interval: (mean, low, high).
pub type Interval = (f64, f64, f64);

#[derive(Debug, Clone, Default)]
pub struct DotPanel {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// Series name and, per category, (mean, low, high) or nothing.
    pub series: Vec<(String, Vec<Option<Interval>>)>,
    /// Draw a line at zero (differences).
    pub zero_line: bool,
}

/// Bars for groups (x) and series (side by side).
#[derive(Debug, Clone, Default)]
pub struct BarPanel {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

/// A panel of any kind.
#[derive(Debug, Clone)]
pub enum Panel {
    Line(LinePanel),
    Dots(DotPanel),
    Bars(BarPanel),
}

/// Draws `panels` stacked vertically (each `panel_height` pixels) into an SVG string.
pub fn svg(
    name: &str,
    panels: &[Panel],
    width: u32,
    panel_height: u32,
) -> Result<String, EvalError> {
    let mut out = String::new();
    {
        let height = panel_height * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| EvalError::Plot {
            file: name.into(),
            message: e.to_string(),
        };
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (panel, area) in panels.iter().zip(areas) {
            match panel {
                Panel::Line(p) => line(&area, p),
                Panel::Dots(p) => dots(&area, p),
                Panel::Bars(p) => bars(&area, p),
            }
            .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

type DrawResult = Result<(), String>;

fn e2s<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

fn range_of(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if (hi - lo).abs() < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let m = (hi - lo) * pad;
    (lo - m, hi + m)
}

const TITLE: (&str, u32) = ("sans-serif", 20);
const LABEL: (&str, u32) = ("sans-serif", 15);

fn line(area: &DrawingArea<SVGBackend<'_>, Shift>, p: &LinePanel) -> DrawResult {
    // A log x axis is drawn as log2(x) with labels 2^k, so every doubling gets a tick.
    let owned;
    let p = if p.x_log {
        let mut q = p.clone();
        let t = |x: f64| x.max(1e-9).log2();
        for s in &mut q.series {
            s.points.iter_mut().for_each(|pt| pt.0 = t(pt.0));
            s.scatter.iter_mut().for_each(|pt| pt.0 = t(pt.0));
        }
        q.x_range = p.x_range.map(|(a, b)| (t(a), t(b)));
        owned = q;
        &owned
    } else {
        p
    };
    let xs = p.series.iter().flat_map(|s| s.points.iter().chain(&s.scatter).map(|q| q.0));
    let (x0, x1) = p.x_range.unwrap_or_else(|| range_of(xs, 0.06));
    let (y0, y1) = p.y_range.unwrap_or_else(|| {
        let ys = p.series.iter().flat_map(|s| {
            let errs = s.errors.clone().unwrap_or_default();
            s.points
                .iter()
                .enumerate()
                .flat_map(move |(i, q)| {
                    let e = errs.get(i).copied().unwrap_or(0.0);
                    [q.1 - e, q.1 + e]
                })
                .chain(s.scatter.iter().map(|q| q.1))
                .collect::<Vec<_>>()
        });
        let extra = p.hline.iter().map(|h| h.0);
        range_of(ys.chain(extra), 0.12)
    });
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, TITLE)
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e2s)?;
    let log = p.x_log;
    let ticks = if log { ((x1.floor() - x0.ceil()) as usize + 1).max(2) } else { 10 };
    chart
        .configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .y_label_formatter(&tick_label)
        .axis_desc_style(LABEL)
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(238, 238, 238))
        .x_labels(ticks)
        .x_label_formatter(&|x| {
            if log {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{:.0}", 2f64.powf(x.round()))
                } else {
                    String::new()
                }
            } else {
                let r = (x * 1000.0).round() / 1000.0;
                format!("{r}")
            }
        })
        .draw()
        .map_err(e2s)?;
    draw_lines(&mut chart, p, (x0, x1))
}

fn draw_lines<'a, X>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<X, plotters::coord::types::RangedCoordf64>,
    >,
    p: &LinePanel,
    (x0, x1): (f64, f64),
) -> DrawResult
where
    X: Ranged<ValueType = f64>,
{
    if let Some((y, label)) = &p.hline {
        let style = ShapeStyle::from(&RGBColor(120, 120, 120)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(x0, *y), (x1, *y)], 6, 4, style))
            .map_err(e2s)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    if p.diagonal {
        let style = ShapeStyle::from(&RGBColor(120, 120, 120)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(x0, x0), (x1, x1)], 6, 4, style))
            .map_err(e2s)?
            .label("perfect calibration")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    for (i, s) in p.series.iter().enumerate() {
        let c = color(i);
        let style = c.stroke_width(2);
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style))
                .map_err(e2s)?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        } else {
            chart
                .draw_series(LineSeries::new(s.points.clone(), style))
                .map_err(e2s)?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .draw_series(s.points.iter().map(|&(x, y)| Circle::new((x, y), 4, c.filled())))
            .map_err(e2s)?;
        chart
            .draw_series(
                s.scatter.iter().map(|&(x, y)| Circle::new((x, y), 2, c.mix(0.45).filled())),
            )
            .map_err(e2s)?;
        if let Some(errs) = &s.errors {
            chart
                .draw_series(s.points.iter().zip(errs).filter(|(_, e)| **e > 0.0).map(
                    |(&(x, y), &e)| {
                        ErrorBar::new_vertical(x, y - e, y, y + e, c.stroke_width(1), 8)
                    },
                ))
                .map_err(e2s)?;
        }
        if i == 0 && !p.point_labels.is_empty() {
            chart
                .draw_series(s.points.iter().zip(&p.point_labels).map(|(&(x, y), l)| {
                    Text::new(l.clone(), (x, y), ("sans-serif", 12).into_font().color(&BLACK))
                }))
                .map_err(e2s)?;
        }
    }
    chart
        .configure_series_labels()
        .position(if p.legend_lower_right {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperLeft
        })
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e2s)
}

/// A chart with one x position per category (labelled with its name) and a numeric y axis.
fn category_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    y_label: &str,
    categories: &[String],
    y: std::ops::Range<f64>,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let k = categories.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, TITLE)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(k as f64 - 0.5), y)
        .map_err(e2s)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(k + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < categories.len() {
                categories[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .y_label_formatter(&tick_label)
        .axis_desc_style(LABEL)
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(e2s)?;
    Ok(chart)
}

fn dots(area: &DrawingArea<SVGBackend<'_>, Shift>, p: &DotPanel) -> DrawResult {
    let k = p.categories.len().max(1);
    let ns = p.series.len().max(1);
    let values =
        p.series.iter().flat_map(|(_, v)| v.iter().flatten().flat_map(|&(m, l, h)| [m, l, h]));
    let (mut y0, mut y1) = range_of(values, 0.12);
    if p.zero_line {
        y0 = y0.min(0.0);
        y1 = y1.max(0.0);
    }
    let mut chart = category_chart(area, &p.title, &p.y_label, &p.categories, y0..y1)?;
    if p.zero_line {
        let style = ShapeStyle::from(&RGBColor(120, 120, 120)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(-0.5, 0.0), (k as f64 - 0.5, 0.0)],
                6,
                4,
                style,
            ))
            .map_err(e2s)?;
    }
    let width = 0.6;
    for (si, (name, vals)) in p.series.iter().enumerate() {
        let c = color(si);
        let offset = if ns == 1 { 0.0 } else { -width / 2.0 + width * si as f64 / (ns - 1) as f64 };
        let pts: Vec<(f64, (f64, f64, f64))> = vals
            .iter()
            .enumerate()
            .filter_map(|(ci, v)| v.map(|v| (ci as f64 + offset, v)))
            .collect();
        chart
            .draw_series(
                pts.iter().map(|&(x, (m, l, h))| {
                    ErrorBar::new_vertical(x, l, m, h, c.stroke_width(2), 10)
                }),
            )
            .map_err(e2s)?;
        chart
            .draw_series(pts.iter().map(|&(x, (m, _, _))| Circle::new((x, m), 5, c.filled())))
            .map_err(e2s)?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e2s)
}

fn bars(area: &DrawingArea<SVGBackend<'_>, Shift>, p: &BarPanel) -> DrawResult {
    let ns = p.series.len().max(1);
    let (_, y1) = range_of(p.series.iter().flat_map(|(_, v)| v.iter().flatten().copied()), 0.15);
    let mut chart = category_chart(area, &p.title, &p.y_label, &p.groups, 0f64..y1.max(1e-9))?;
    let total = 0.8;
    let w = total / ns as f64;
    for (si, (name, vals)) in p.series.iter().enumerate() {
        let c = color(si);
        let rects: Vec<Rectangle<(f64, f64)>> = vals
            .iter()
            .enumerate()
            .filter_map(|(gi, v)| {
                v.map(|v| {
                    let x = gi as f64 - total / 2.0 + w * si as f64;
                    Rectangle::new([(x + 0.05 * w, 0.0), (x + 0.95 * w, v)], c.filled())
                })
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(e2s)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e2s)
}

/// A y tick: at most 4 decimals, trailing zeros dropped, and never "-0".
fn tick_label(v: &f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    match s {
        "-0" | "" => "0".to_string(),
        s => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn y_ticks_drop_trailing_zeros_and_negative_zero() {
        let l = |v: f64| super::tick_label(&v);
        assert_eq!(l(-0.0), "0");
        assert_eq!(l(-0.00001), "0");
        assert_eq!(l(0.05), "0.05");
        assert_eq!(l(-0.01), "-0.01");
        assert_eq!(l(10.0), "10");
        assert_eq!(l(64.0), "64");
        assert_eq!(l(0.1234), "0.1234");
    }

    use super::*;

    #[test]
    fn every_panel_kind_draws_labelled_svg() {
        let line = Panel::Line(LinePanel {
            title: "Held-out accuracy".into(),
            x_label: "comparisons".into(),
            y_label: "accuracy (%)".into(),
            series: vec![Series {
                name: "h0".into(),
                points: vec![(25.0, 60.0), (50.0, 65.0), (100.0, 70.0)],
                errors: Some(vec![2.0, 1.0, 0.0]),
                scatter: vec![(25.0, 58.0)],
                dashed: false,
            }],
            x_log: true,
            hline: Some((50.0, "chance".into())),
            ..LinePanel::default()
        });
        let dots = Panel::Dots(DotPanel {
            title: "ROUGE".into(),
            y_label: "F1".into(),
            categories: vec!["R-1".into(), "R-2".into()],
            series: vec![("greedy".into(), vec![Some((0.3, 0.28, 0.32)), None])],
            zero_line: true,
        });
        let bars = Panel::Bars(BarPanel {
            title: "Pk".into(),
            y_label: "Pk".into(),
            groups: vec!["alice".into()],
            series: vec![("fixed".into(), vec![Some(0.4)]), ("learned".into(), vec![None])],
        });
        let s = svg("test.svg", &[line, dots, bars], 700, 350).unwrap();
        assert!(s.starts_with("<svg"));
        for text in [
            "Held-out accuracy",
            "accuracy (%)",
            "comparisons",
            "chance",
            "h0",
            "greedy",
            "R-1",
            "learned",
        ] {
            assert!(s.contains(text), "missing {text}");
        }
        // An empty panel still draws (a chart with no data, not an error).
        assert!(svg("empty.svg", &[Panel::Line(LinePanel::default())], 400, 300).is_ok());
    }
}
