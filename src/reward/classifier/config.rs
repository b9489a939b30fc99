//! Parsing and validating a classifier's `config.json`: every layer's shape is
//! checked against its input here, so loading and running never meet a mismatch.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::{Dims, SampleShape, CLASSIFIER_FORMAT};
use crate::backend::Conv2dGeometry;
use crate::error::{Error, Result};

pub(super) struct Config {
    pub(super) input: SampleShape,
    pub(super) range: Option<(f32, f32)>,
    pub(super) num_classes: usize,
    pub(super) layers: Vec<LayerSpec>,
}

pub(super) struct LayerSpec {
    pub(super) index: usize,
    pub(super) kind: LayerKind,
    pub(super) input: Dims,
    pub(super) output: Dims,
}

pub(super) enum LayerKind {
    Conv {
        name: String,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    },
    Linear {
        name: String,
        fin: usize,
        fout: usize,
        bias: bool,
    },
    Silu,
    Relu,
    AvgPool {
        kernel: usize,
    },
    Flatten,
}

const LAYER_TYPES: &str = "conv2d, linear, silu, relu, avg_pool2d, flatten";

/// One JSON object of the config, with errors naming the file and `field.key`.
struct Obj<'a> {
    path: &'a Path,
    field: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(path: &'a Path, field: impl Into<String>, v: &'a Value) -> Result<Self> {
        let field = field.into();
        match v {
            Value::Object(map) => Ok(Obj { path, field, map }),
            other => Err(Error::config(
                path,
                field,
                format!("expected a JSON object, found {other}"),
            )),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.field.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.field)
        }
    }

    fn err(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(self.path, self.key(key), message)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    /// A positive integer (`default` when absent, required when `None`).
    fn positive(&self, key: &str, default: Option<usize>) -> Result<usize> {
        let v = match (self.get(key), default) {
            (None, Some(d)) => return Ok(d),
            (None, None) => return Err(self.err(key, "missing (expected a positive integer)")),
            (Some(v), _) => v,
        };
        match v.as_u64() {
            Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(n as usize),
            _ => Err(self.err(key, format!("expected a positive integer, found {v}"))),
        }
    }

    fn non_negative(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if n <= u32::MAX as u64 => Ok(n as usize),
                _ => Err(self.err(key, format!("expected a non-negative integer, found {v}"))),
            },
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    fn string(&self, key: &str) -> Result<&'a str> {
        let v = self.required(key)?;
        v.as_str()
            .ok_or_else(|| self.err(key, format!("expected a string, found {v}")))
    }

    /// Refuses keys outside `accepted`: an ignored key (say `dilation` or `groups`)
    /// would silently compute something else than the config's author meant.
    fn only(&self, accepted: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !accepted.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(self.err(
                k,
                format!(
                    "unknown key for this layer type (accepted: {})",
                    accepted.join(", ")
                ),
            )),
        }
    }
}

pub(super) fn parse_config(path: &Path, text: &str) -> Result<Config> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::config(path, "(file)", format!("not valid JSON: {e}")))?;
    let top = Obj::new(path, "", &value)?;
    let format = top.string("format")?;
    if format != CLASSIFIER_FORMAT {
        return Err(top.err(
            "format",
            format!("{format:?} is not supported (expected {CLASSIFIER_FORMAT:?})"),
        ));
    }
    let input = Obj::new(path, "input", top.required("input")?)?;
    let channels = input.positive("channels", None)?;
    let height = input.positive("height", None)?;
    let width = input.positive("width", None)?;
    let range = match input.get("range") {
        None => None,
        Some(v) => {
            let pair = v.as_array().and_then(|a| match a.as_slice() {
                [lo, hi] => Some((lo.as_f64()?, hi.as_f64()?)),
                _ => None,
            });
            match pair {
                Some((lo, hi)) if lo.is_finite() && hi.is_finite() && lo < hi => {
                    Some((lo as f32, hi as f32))
                }
                _ => {
                    return Err(input.err(
                        "range",
                        format!("expected [low, high] with finite low < high, found {v}"),
                    ))
                }
            }
        }
    };
    let num_classes = top.positive("num_classes", None)?;
    let list = match top.required("layers")? {
        Value::Array(a) if !a.is_empty() => a,
        other => {
            return Err(top.err(
                "layers",
                format!("expected a non-empty list of layers, found {other}"),
            ))
        }
    };

    let mut dims = Dims::Map {
        h: height,
        w: width,
        c: channels,
    };
    let mut names = HashSet::new();
    let mut layers = Vec::with_capacity(list.len());
    let mut last_linear = None;
    for (index, v) in list.iter().enumerate() {
        let l = Obj::new(path, format!("layers[{index}]"), v)?;
        let kind_name = l.string("type")?;
        let input_dims = dims;
        let shape_err = |what: &str| {
            l.err(
                "type",
                format!(
                    "{kind_name} {what}, but its input is {}",
                    input_dims.describe()
                ),
            )
        };
        let mut check_name = |l: &Obj| -> Result<String> {
            let name = l.string("name")?;
            if name.is_empty() || !names.insert(name.to_string()) {
                return Err(l.err(
                    "name",
                    format!("{name:?} is empty or used by an earlier layer (names must be unique)"),
                ));
            }
            Ok(name.to_string())
        };
        let kind = match kind_name {
            "conv2d" => {
                l.only(&[
                    "type",
                    "name",
                    "in_channels",
                    "out_channels",
                    "kernel",
                    "stride",
                    "padding",
                    "bias",
                ])?;
                let name = check_name(&l)?;
                let cin = l.positive("in_channels", None)?;
                let cout = l.positive("out_channels", None)?;
                let kernel = l.positive("kernel", None)?;
                let stride = l.positive("stride", Some(1))?;
                let padding = l.non_negative("padding", 0)?;
                let bias = l.bool("bias", true)?;
                let Dims::Map { h, w, c } = dims else {
                    return Err(shape_err("needs a feature map"));
                };
                if c != cin {
                    return Err(l.err(
                        "in_channels",
                        format!("is {cin}, but the layer's input has {c} channels"),
                    ));
                }
                let geometry = Conv2dGeometry::symmetric(stride, padding);
                let Some((oh, ow)) = geometry.output_size(h, w, kernel, kernel) else {
                    return Err(shape_err(&format!(
                        "with kernel {kernel} and padding {padding} needs a larger input"
                    )));
                };
                dims = Dims::Map {
                    h: oh,
                    w: ow,
                    c: cout,
                };
                LayerKind::Conv {
                    name,
                    cin,
                    cout,
                    kernel,
                    stride,
                    padding,
                    bias,
                }
            }
            "linear" => {
                l.only(&["type", "name", "in_features", "out_features", "bias"])?;
                let name = check_name(&l)?;
                let fin = l.positive("in_features", None)?;
                let fout = l.positive("out_features", None)?;
                let bias = l.bool("bias", true)?;
                let Dims::Flat { features, .. } = dims else {
                    return Err(shape_err(
                        "needs a flat input (add a flatten layer before it)",
                    ));
                };
                if features != fin {
                    return Err(l.err(
                        "in_features",
                        format!("is {fin}, but the layer's input has {features} features"),
                    ));
                }
                last_linear = Some((index, fout));
                dims = Dims::Flat {
                    features: fout,
                    from: None,
                };
                LayerKind::Linear {
                    name,
                    fin,
                    fout,
                    bias,
                }
            }
            "silu" | "relu" => {
                l.only(&["type"])?;
                if kind_name == "silu" {
                    LayerKind::Silu
                } else {
                    LayerKind::Relu
                }
            }
            "avg_pool2d" => {
                l.only(&["type", "kernel"])?;
                let kernel = l.positive("kernel", None)?;
                let Dims::Map { h, w, c } = dims else {
                    return Err(shape_err("needs a feature map"));
                };
                if h < kernel || w < kernel {
                    return Err(shape_err(&format!(
                        "with kernel {kernel} needs a larger input"
                    )));
                }
                dims = Dims::Map {
                    h: h / kernel,
                    w: w / kernel,
                    c,
                };
                LayerKind::AvgPool { kernel }
            }
            "flatten" => {
                l.only(&["type"])?;
                if let Dims::Map { h, w, c } = dims {
                    dims = Dims::Flat {
                        features: h * w * c,
                        from: Some((h, w, c)),
                    };
                }
                LayerKind::Flatten
            }
            other => {
                return Err(l.err(
                    "type",
                    format!("unknown layer type {other:?} (supported: {LAYER_TYPES})"),
                ))
            }
        };
        layers.push(LayerSpec {
            index,
            kind,
            input: input_dims,
            output: dims,
        });
    }
    match dims {
        Dims::Flat { features, .. } if features == num_classes => {}
        _ => {
            let last = match last_linear {
                Some((i, out)) => {
                    format!("the last linear layer (layers[{i}]) has {out} outputs and ")
                }
                None => String::new(),
            };
            return Err(top.err(
                "num_classes",
                format!(
                    "is {num_classes}, but {last}the network ends in {}",
                    dims.describe()
                ),
            ));
        }
    }
    Ok(Config {
        input: SampleShape::new(height, width, channels),
        range,
        num_classes,
        layers,
    })
}
